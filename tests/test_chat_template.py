import pytest

from hybridinfer.chat_template import BUILTIN_TEMPLATES, render_chat
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
