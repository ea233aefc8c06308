import sys
import time

import pytest

from hybridinfer.text import chat_template, chat_template_limits
from hybridinfer.text.chat_template import BUILTIN_TEMPLATES, render_chat
from hybridinfer.errors import HybridInferError

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def test_smollm2_default_system_and_generation_prompt():
    text = render_chat([{"role": "user", "content": "What is 2+2?"}], SMOLLM2)
    assert text == SMOL_SYSTEM + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_smollm2_own_system_and_no_generation_prompt():
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    text = render_chat(messages, SMOLLM2, add_generation_prompt=False)
    assert text == (
        "<|im_start|>system\nBe terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
    )


def test_bos_and_eos_tokens_are_template_variables():
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
    assert render_chat([{"role": "user", "content": "x"}], template, bos_token="<s>", eos_token="</s>") == "<s>x</s>"


def test_trim_blocks_and_lstrip_blocks_like_hf():
    template = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}"
    assert render_chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], template) == "[a]\n[b]\n"


def test_tojson_does_not_html_escape_and_extra_variables_pass_through():
    template = "{{ tools | tojson }}|{{ strftime_now('%Y') | length }}"
    out = render_chat([], template, tools=[{"name": "a<b>&'"}])
    assert out == '[{"name": "a<b>&\'"}]|4'


def test_generation_block_renders_its_body():
    template = "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    assert render_chat([{"role": "assistant", "content": "ok"}], template) == "ok"


def test_llama2_fallback_when_no_template():
    messages = [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    expected = (
        "<s>[INST] <<SYS>>\nYou are kind.\n<</SYS>>\n\nHi [/INST] Hello! </s>"
        "<s>[INST] How are you? [/INST]"
    )
    for template in (None, "", "llama2"):
        assert render_chat(messages, template, bos_token="<s>", eos_token="</s>") == expected


def test_llama2_without_system():
    assert render_chat([{"role": "user", "content": " Hi "}], None, bos_token="<s>") == "<s>[INST] Hi [/INST]"


def test_minicpm():
    messages = [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "Who are you?"},
    ]
    assert render_chat(messages, "minicpm") == "<用户>你好<AI>你好！<用户>Who are you?<AI>"


def test_chatml_builtin_matches_a_chatml_jinja_template():
    jinja = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    for generation_prompt in (True, False):
        assert render_chat(messages, "chatml", add_generation_prompt=generation_prompt) == render_chat(
            messages, jinja, add_generation_prompt=generation_prompt
        )


def test_builtin_names():
    assert set(BUILTIN_TEMPLATES) >= {"llama2", "minicpm", "chatml"}


def test_unknown_builtin_name():
    with pytest.raises(HybridInferError, match="unknown chat template 'vicuna'"):
        render_chat([{"role": "user", "content": "x"}], "vicuna")


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__ }}",
        "{{ raise_exception.__globals__ }}",
        "{{ '{0.__class__.__mro__}'.format('') }}",
        "{{ '{x.__class__}'.format_map({'x': 1}) }}",
        "{% set x = messages.append({'role': 'user', 'content': 'y'}) %}{{ messages | length }}",
    ],
)
def test_sandbox_blocks_unsafe_access(template):
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(HybridInferError) as info:
        render_chat(messages, template)
    assert str(info.value).startswith("chat template error:")
    assert "--chat-template" in str(info.value) and "\n" not in str(info.value)
    assert messages == [{"role": "user", "content": "x"}]


def test_syntax_error():
    with pytest.raises(HybridInferError, match=r"chat template error: .*line 2.*--chat-template NAME"):
        render_chat([], "ok\n{% for m in messages %}{{ m.content }")


def test_raise_exception():
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    with pytest.raises(HybridInferError, match="chat template error: .*Conversation roles must alternate"):
        render_chat([{"role": "assistant", "content": "x"}], template)


def test_undefined_variable_misuse():
    with pytest.raises(HybridInferError, match="chat template error: .*undefined"):
        render_chat([], "{{ nothing.here }}")


def test_python_error_inside_template():
    with pytest.raises(HybridInferError, match="chat template error: TypeError"):
        render_chat([{"role": "user", "content": None}], "{{ 'a' + messages[0]['content'] }}")


def test_each_turn_extends_the_previous_rendering():
    """The chat loop feeds each turn's full rendering; the KV cache is reused because it extends the last one."""
    for template in (SMOLLM2, "llama2", "minicpm"):
        conversation = [{"role": "user", "content": "Hi"}]
        fed = render_chat(conversation, template, bos_token="<s>", eos_token="</s>")
        for user, reply in [("What is 2+2?", "4"), ("And 3+3?", "6"), ("Thanks", "You're welcome.")]:
            conversation += [{"role": "assistant", "content": reply}, {"role": "user", "content": user}]
            after = render_chat(conversation, template, bos_token="<s>", eos_token="</s>")
            assert after.startswith(fed) and user in after[len(fed):]
            fed = after


# ----------------------------------------------------------------------------------------------------------
# Hostile templates: each stops, soon, with one HybridInferError that names the limit


def _refused(template: str, **variables) -> str:
    """The one-line error message `template` renders to, after checking it came within a few seconds."""
    start = time.monotonic()
    with pytest.raises(HybridInferError) as info:
        render_chat([{"role": "user", "content": "x"}], template, **variables)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert message.startswith("chat template error: ") and "\n" not in message
    assert message.endswith("pass --chat-template NAME (chatml, llama2, minicpm) to use a built-in format instead")
    return message


TOO_BIG = "built a value larger than 1,048,576 characters"
TOO_LONG = "ran longer than 2 s"


@pytest.mark.parametrize(
    "template, limit",
    [
        # time
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "range of more than"),
        ("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}", TOO_LONG),
        ("{% set s = 'ab' * 100000 %}{% for c in s %}{% for d in s %}{% endfor %}{% endfor %}", TOO_LONG),
        # one value's size
        ("{{ 'a' * 1000000000 }}", TOO_BIG + " (*)"),
        ("{{ 'x'|center(1000000000) }}", TOO_BIG + " (the center filter)"),
        ("{{ ''|indent(1000000000) }}", TOO_BIG + " (the indent filter)"),
        ("{{ '%1000000000s'|format('a') }}", TOO_BIG + " (the format filter)"),
        ("{{ '%1000000000s' % 'a' }}", TOO_BIG + " (%)"),
        ("{{ '{:>1000000000}'.format(1) }}", TOO_BIG + " (str.format)"),
        ("{{ ('{0}' * 1000).format('a' * 100000) }}", TOO_BIG + " (str.format)"),
        ("{{ 'a'.ljust(10**9) }}", TOO_BIG + " (ljust())"),
        ("{{ 'a'.zfill(10**9) }}", TOO_BIG + " (zfill())"),
        ("{{ ('\t' * 1000).expandtabs(100000) }}", TOO_BIG + " (expandtabs())"),
        ("{% set s = 'a' * 1000 %}{{ s.replace('a', s).replace('a', s).replace('a', s) }}", TOO_BIG + " (replace())"),
        ("{% set s = 'a' * 1000 %}{{ s|replace('a', s)|replace('a', s) }}", TOO_BIG + " (the replace filter)"),
        ("{% set s = 'a' * 10000 %}{{ s.translate({97: s}) }}", TOO_BIG + " (translate())"),
        ("{% set s = 'a' * 100000 %}{{ range(1000)|join(s) }}", TOO_BIG + " (the join filter)"),
        ("{% set s = 'a' * 100000 %}{{ s.join(range(1000)|map('string')) }}", TOO_BIG + " (join())"),
        ("{% set s = 'a ' * 100000 %}{{ s|wordwrap(1, wrapstring=s) }}", TOO_BIG + " (the wordwrap filter)"),
        ("{{ range(1000)|list|tojson(indent=100000) }}", TOO_BIG + " (the tojson filter)"),
        ("{{ [1]|batch(100000, fill_with='a' * 1000)|list }}", TOO_BIG + " (the batch filter)"),
        ("{{ ('%(a)s' * 1000) % {'a': 'a' * 100000} }}", TOO_BIG + " (%)"),
        ("{{ (1).to_bytes(1000000000, 'big') }}", TOO_BIG + " (to_bytes())"),
        ("{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
         TOO_BIG + " (~)"),
        ("{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
         TOO_BIG + " (+)"),
        ("{% set ns = namespace(l=['a' * 1000]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
         TOO_BIG + " (+)"),
        ("{{ (['a' * 1000] * 100000)|length }}", TOO_BIG + " (*)"),
        (  # 10**4 references to a 1000-character string, from four 10-item literals
            "{% set a = 'a' * 1000 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
            "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{% set d = [c, c, c, c, c, c, c, c, c, c] %}"
            "{% set e = [d, d, d, d, d, d, d, d, d, d] %}{{ e == e }}",
            TOO_BIG + " (a literal)",
        ),
        ("{% set s = 'a' * 100000 %}{% macro m() %}{% for i in range(10000) %}{{ s }}{% endfor %}{% endmacro %}"
         "{{ m() }}", TOO_BIG + " (a macro's or block's output)"),
        ("{% set s = 'a' * 100000 %}{% set x %}{% for i in range(10000) %}{{ s }}{% endfor %}{% endset %}",
         TOO_BIG + " (a macro's or block's output)"),
        # numbers (jinja's ** is left-associative: 10 ** 10 ** 10 is (10 ** 10) ** 10)
        ("{{ 10 ** (10 ** 10) }}", "built a number of more than 65,536 bits (**)"),
        ("{% set ns = namespace(x=3) %}{% for i in range(100) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
         "built a number of more than 65,536 bits (*)"),
        # the output
        ("{% for i in range(10000) %}{{ 'a' * 1000 }}{% endfor %}", "output passed 1,048,576 characters"),
        ("{{ lipsum(n=10**7) }}", "'lipsum' is undefined"),
        # recursion and nesting
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "nested macro calls more than 50 deep"),
        ("{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}", "nested macro calls more than 50 deep"),
        ("{% block b %}{{ self.b() }}{% endblock %}", "nested macro calls more than 50 deep"),
        ("{% set ns = namespace(t=()) %}{% for i in range(10000) %}{% set ns.t = (ns.t,) %}{% endfor %}"
         "{{ ns.t in {} }}", "nested lists or dicts more than 100 deep"),  # hash() of it would crash CPython
        ("{{ " + "(" * 1000 + "1" + ")" * 1000 + " }}", "recursed too deeply"),
    ],
)
def test_hostile_template_is_stopped(template, limit):
    assert limit in _refused(template)


def test_the_deadline_stops_a_long_expression():
    # one line of generated code, ~4 ms of C per comparison (ints against floats: no identity shortcut), ~11 s
    # unless the deadline checks between them
    template = "{% set a = [0] * 100000 %}{% set b = [0.0] * 100000 %}{{ [" + ", ".join(["a == b"] * 3000) + "] }}"
    chat_template._compile(template)  # compiled (and cached) outside the deadline
    start = time.monotonic()
    assert TOO_LONG in _refused(template)
    assert time.monotonic() - start < 4


def test_uncaught_recursion_and_memory_errors_become_the_one_line_error(monkeypatch):
    monkeypatch.setattr(chat_template_limits, "MAX_CALL_DEPTH", 10**9)  # let Python's own limit trip
    assert "recursed too deeply" in _refused("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")

    def out_of_memory(fmt):
        raise MemoryError

    monkeypatch.setitem(chat_template._ENV.globals, "strftime_now", out_of_memory)
    assert "ran out of memory" in _refused("{{ strftime_now('%Y') }}")


def test_big_power_by_left_associativity_is_fine():
    assert render_chat([], "{{ 10 ** 10 ** 10 }}") == "1" + "0" * 100


def test_the_previous_trace_function_comes_back(monkeypatch):
    monkeypatch.setattr(chat_template_limits, "MAX_SECONDS", 0.2)

    def tracer(frame, event, arg):
        return None

    sys.settrace(tracer)
    try:
        assert render_chat([{"role": "user", "content": "Hi"}], SMOLLM2).endswith("<|im_start|>assistant\n")
        with pytest.raises(HybridInferError, match="ran longer than 0.2 s"):  # the tracer raised, so CPython dropped it
            render_chat([], "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}")
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)


def test_a_long_conversation_still_renders():
    messages = [{"role": "system", "content": "Be helpful."}]
    for i in range(200):
        role = "user" if i % 2 == 0 else "assistant"
        messages.append({"role": role, "content": f"message {i}: " + "lorem ipsum dolor sit amet " * 80})
    start = time.monotonic()
    text = render_chat(messages, SMOLLM2)
    assert time.monotonic() - start < 1
    assert len(text) > 400_000
    assert text == BUILTIN_TEMPLATES["chatml"](messages)

    # range(), loop, namespace and tojson over the whole conversation stay within the limits too
    template = (
        "{% set ns = namespace(users=0) %}{% for i in range(messages|length) %}{% set m = messages[i] %}"
        "{% if m.role == 'user' %}{% set ns.users = ns.users + 1 %}{% endif %}"
        "{{ loop.index0 }}:{{ m.role }}:{{ m.content|trim }}{% if not loop.last %}{{ '\\n' }}{% endif %}"
        "{% endfor %}"
        "|{{ ns.users }}|{{ messages[-1]|tojson|length > 1000 }}"
    )
    text = render_chat(messages, template)
    assert text.endswith("|100|True") and text.count("\n") == 200
