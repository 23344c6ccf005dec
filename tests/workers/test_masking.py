import json
import random

import pytest

from workers.masking import MASK, MIN_PARTIAL, StreamMasker, mask

PASSWORD = "password123"
TOKEN = "tok_9f8e7d6c"


def stream(secrets, chunks, *, truncated=False):
    """Feed `chunks` through a StreamMasker; return the emitted pieces, the flush() result last."""
    masker = StreamMasker(secrets)
    pieces = [masker.feed(chunk) for chunk in chunks]
    pieces.append(masker.flush(truncated=truncated))
    return pieces


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


def test_it_streams_a_secret_split_across_two_chunks_without_emitting_any_of_it():
    pieces = stream([PASSWORD], ["pass", "word123"])
    assert pieces[:2] == ["", ""]
    assert "".join(pieces) == MASK


def test_it_streams_a_secret_split_across_three_chunks():
    pieces = stream([PASSWORD], ["user: alice, pass: pa", "ssword", "123, done\n"])
    assert "".join(pieces) == f"user: alice, pass: {MASK}, done\n"


def test_it_emits_text_without_secrets_as_it_goes():
    pieces = stream([PASSWORD], ["a long line of plain output\n", "more\n"])
    assert pieces[0].startswith("a long line")
    assert "".join(pieces) == "a long line of plain output\nmore\n"


def test_it_streams_with_a_boundary_at_every_position():
    text = f"start {PASSWORD} middle {TOKEN}{PASSWORD} end"
    expected = f"start {MASK} middle {MASK}{MASK} end"
    for i in range(len(text) + 1):
        assert "".join(stream([PASSWORD, TOKEN], [text[:i], text[i:]])) == expected, i


def test_it_streams_with_two_boundaries_at_every_pair_of_positions():
    text = f"a {PASSWORD} b"
    expected = f"a {MASK} b"
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            chunks = [text[:i], text[i:j], text[j:]]
            assert "".join(stream([PASSWORD], chunks)) == expected, (i, j)


def test_it_streams_one_character_at_a_time():
    text = f"{PASSWORD}x{PASSWORD[:4]}"
    assert "".join(stream([PASSWORD], list(text))) == f"{MASK}x{PASSWORD[:4]}"
    assert "".join(stream([PASSWORD], list(text), truncated=True)) == f"{MASK}x{MASK}"


def test_it_flushes_what_is_held_back():
    masker = StreamMasker([PASSWORD])
    assert masker.feed("ok pass") == ""
    assert masker.flush() == "ok pass"
    assert masker.feed("word123") == ""
    assert masker.flush() == "word123"
    assert masker.flush() == ""


def test_it_flushes_a_truncated_tail_masked():
    masker = StreamMasker([PASSWORD])
    emitted = masker.feed("output capped here: passwo")
    assert emitted + masker.flush(truncated=True) == f"output capped here: {MASK}"


def test_it_streams_through_unchanged_without_secrets():
    masker = StreamMasker(["", ""])
    assert masker.feed("abc") == "abc"
    assert masker.feed("") == ""
    assert masker.flush() == ""


def test_it_streams_overlapping_occurrences_like_mask():
    text = "xx aaaaaaa yy abcdef zz"
    secrets = ["aa", "abcd", "cdef"]
    for i in range(len(text) + 1):
        assert "".join(stream(secrets, [text[:i], text[i:]])) == mask(text, secrets)


def test_it_leaks_nothing_of_a_secret_for_random_chunkings():
    rng = random.Random(20240611)
    secrets = [PASSWORD, TOKEN, "ab", 'q"uo\\te', "password"]
    alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789 \n_"\\'
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(0, 6)):
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))))
            parts.append(rng.choice([*secrets, json.dumps(secrets[3])[1:-1]]))
        text = "".join(parts)
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 8))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        truncated = rng.random() < 0.5
        pieces = stream(secrets, chunks, truncated=truncated)
        output = "".join(pieces)
        assert output == mask(text, secrets, truncated=truncated), (text, cuts)
        for secret in secrets:
            assert secret not in output, (text, cuts)


def test_it_emits_no_two_characters_of_a_secret_for_random_chunkings():
    # The filler shares no character with the secrets, so any two adjacent characters of a secret in the output
    # can only come from a leaked piece of it.
    rng = random.Random(7)
    secrets = [PASSWORD, TOKEN, "word", "ss"]
    filler = "xyzXYZ -=\n"
    fragments = {secret[i : i + 2] for secret in secrets for i in range(len(secret) - 1)}
    assert not set(filler) & set("".join(secrets))
    for _ in range(300):
        text = "".join(
            "".join(rng.choice(filler) for _ in range(rng.randint(0, 5))) + rng.choice(secrets)
            for _ in range(rng.randint(1, 5))
        )
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 10))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        pieces = stream(secrets, chunks)
        assert not any(fragment in "".join(pieces) for fragment in fragments), (text, cuts)
        assert set("".join(pieces)) <= set(filler) | {"*"}
