import json
import random

import pytest

from workers.masking import MASK, MIN_PARTIAL, mask

PASSWORD = "password123"
TOKEN = "tok_9f8e7d6c"


def test_it_masks_a_secret():
    assert mask(f"login with {PASSWORD} ok", [PASSWORD]) == f"login with {MASK} ok"


def test_it_masks_several_secrets():
    text = f"user=alice pass={PASSWORD} token={TOKEN}\n"
    assert mask(text, [PASSWORD, TOKEN]) == f"user=alice pass={MASK} token={MASK}\n"


def test_it_masks_every_occurrence():
    text = f"{PASSWORD}{PASSWORD} and {PASSWORD}"
    assert mask(text, [PASSWORD]) == f"{MASK}{MASK} and {MASK}"


def test_it_masks_a_secret_containing_another_one_whole():
    for secrets in (["word", PASSWORD], [PASSWORD, "word"]):
        assert mask(f"[{PASSWORD}] [word]", secrets) == f"[{MASK}] [{MASK}]"


def test_it_masks_overlapping_occurrences_as_one():
    assert mask("x abcdef y", ["abcd", "cdef"]) == f"x {MASK} y"
    assert mask("x aaa y", ["aa"]) == f"x {MASK} y"
    assert mask("abcXabc", ["abc"]) == f"{MASK}X{MASK}"


def test_it_ignores_empty_secrets():
    assert mask("nothing to hide", []) == "nothing to hide"
    assert mask("nothing to hide", ["", ""]) == "nothing to hide"
    assert mask("", [PASSWORD]) == ""


def test_it_escapes_regex_characters():
    assert mask("a.b a+b (a|b)", ["a+b", "(a|b)"]) == f"a.b {MASK} {MASK}"


@pytest.mark.parametrize("secret", ['pa"ss', "back\\slash", 'both"\\x', "tab\there", 'ünï"cødé'])
def test_it_masks_the_json_escaped_form(secret):
    printed = json.dumps({"password": secret})
    assert json.dumps(secret)[1:-1] != secret
    assert mask(printed, [secret]) == f'{{"password": "{MASK}"}}'
    assert mask(f"raw: {secret}", [secret]) == f"raw: {MASK}"


def test_it_masks_json_printed_without_ascii_escapes():
    secret = 'ünï"cødé'
    printed = json.dumps({"password": secret}, ensure_ascii=False)
    assert mask(printed, [secret]) == f'{{"password": "{MASK}"}}'


def test_it_masks_a_truncated_tail_only_when_asked():
    cut = f"log line\nconnecting with {PASSWORD[:5]}"
    assert mask(cut, [PASSWORD], truncated=True) == f"log line\nconnecting with {MASK}"
    assert mask(cut, [PASSWORD]) == cut


def test_it_masks_the_longest_truncated_tail():
    # "abab" ends with both "ab" and "abab", prefixes of "ababx": the whole tail goes.
    assert mask("--abab", ["ababx"], truncated=True) == f"--{MASK}"


def test_it_masks_a_truncated_tail_of_the_minimum_length_and_not_shorter():
    assert MIN_PARTIAL == 2
    assert mask("end pa", [PASSWORD], truncated=True) == f"end {MASK}"
    assert mask("end p", [PASSWORD], truncated=True) == "end p"


def test_it_merges_a_truncated_tail_with_a_full_secret_inside_it():
    # The tail "pass" is a prefix of "passpass"; the full secret "ss" inside it is swallowed.
    assert mask("x passpa", ["passpass", "ss"], truncated=True) == f"x {MASK}"


def test_it_masks_a_truncated_tail_of_a_json_escaped_form():
    secret = 'pa"ssword'
    assert mask('{"p": "pa\\"ss', [secret], truncated=True) == f'{{"p": "{MASK}'


def test_it_masks_a_whole_secret_at_the_end_of_truncated_text():
    assert mask(f"x {PASSWORD}", [PASSWORD], truncated=True) == f"x {MASK}"


def test_it_leaks_no_secret_from_random_text():
    rng = random.Random(20240611)
    secrets = [PASSWORD, TOKEN, "ab", 'q"uo\\te', "password"]
    alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789 \n_"\\'
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(0, 6)):
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))))
            parts.append(rng.choice([*secrets, json.dumps(secrets[3])[1:-1]]))
        text = "".join(parts)
        output = mask(text, secrets, truncated=rng.random() < 0.5)
        for secret in secrets:
            assert secret not in output, text
