from hybridinfer.generation.stop_strings import StopStringMatcher


def run(stops, pieces):
    """Feed pieces until a stop; return (everything emitted, including the flush, stopped?)."""
    matcher = StopStringMatcher(stops)
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    out.append(matcher.flush())
    return "".join(out), False


def test_no_stops_passes_everything_through():
    matcher = StopStringMatcher([])
    assert matcher.feed("Hello") == ("Hello", False)
    assert matcher.feed(" <|im") == (" <|im", False)
    assert matcher.flush() == ""


def test_no_stop_found_emits_all_text():
    assert run(["</s>"], ["Hello", ", ", "world", "!"]) == ("Hello, world!", False)


def test_stop_split_over_several_pieces():
    matcher = StopStringMatcher(["<|im_end|>"])
    assert matcher.feed("The answer") == ("The answer", False)
    assert matcher.feed(" is 4<|") == (" is 4", False)  # "<|" held back
    assert matcher.feed("im_") == ("", False)
    assert matcher.feed("end|>trailing") == ("", True)
    assert matcher.stopped and matcher.matched == "<|im_end|>"
    assert matcher.feed("more") == ("", True)
    assert matcher.flush() == ""


def test_stop_inside_one_piece_truncates_before_it():
    assert run(["STOP"], ["abcSTOPdef"]) == ("abc", True)
    assert run(["STOP"], ["STOP"]) == ("", True)


def test_partial_prefix_held_back_then_released():
    matcher = StopStringMatcher(["\nUser:"])
    assert matcher.feed("Sure.\nUs") == ("Sure.", False)
    assert matcher.held == "\nUs"
    assert matcher.feed("ually") == ("\nUsually", False)  # not the stop after all
    assert matcher.held == ""
    assert matcher.feed(" yes\n") == (" yes", False)
    assert matcher.flush() == "\n"  # released at the end


def test_held_prefix_that_restarts_a_match():
    # "aab" with stop "ab": the held "a" must not hide the match that starts at the second "a"
    matcher = StopStringMatcher(["ab"])
    assert matcher.feed("a") == ("", False)
    assert matcher.feed("a") == ("a", False)
    assert matcher.feed("b") == ("", True)


def test_multiple_stops_earliest_wins():
    assert run(["world", "lo"], ["Hello", " world"]) == ("Hel", True)
    matcher = StopStringMatcher(["###", "\n\n"])
    assert matcher.feed("one\n") == ("one", False)
    assert matcher.feed("#") == ("\n", False)  # "\n#" can no longer become "\n\n"; "#" may start "###"
    assert matcher.feed("##") == ("", True)
    assert matcher.matched == "###"


def test_multiple_stops_longest_partial_is_held():
    matcher = StopStringMatcher(["</s>", "<|end|>"])
    assert matcher.feed("x<|en") == ("x", False)
    assert matcher.feed("d") == ("", False)
    assert matcher.feed("|>") == ("", True)
    assert matcher.matched == "<|end|>"


def test_empty_stop_strings_are_ignored():
    assert run(["", "END"], ["abc", "END"]) == ("abc", True)
    assert run([""], ["abc"]) == ("abc", False)


def test_flush_after_partial_at_end_of_generation():
    assert run(["<|im_end|>"], ["Bye", "<|im"]) == ("Bye<|im", False)
