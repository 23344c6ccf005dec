import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command

from packages.checks import check_fernet_keys
from packages.encryption import EncryptionError, check_keys, decrypt, encrypt, generate_key, rotate
from packages.models import Secret, SecretScope

# Two fixed keys, so a failure is reproducible: Alice's key is the old one, Bob's the new one.
ALICE_KEY = "QWxpY2UtYWxpY2UtYWxpY2UtYWxpY2UtYWxpY2UtISE="
BOB_KEY = "Qm9iLWJvYi1ib2ItYm9iLWJvYi1ib2ItYm9iLWJvYiE="
VALUE = "s3cr3t-p4ssw0rd-ünïcode"


@pytest.fixture
def alice_keys(settings):
    settings.EXECUTOR_FERNET_KEYS = [ALICE_KEY]
    return settings


def test_it_accepts_the_fixed_keys():
    check_keys([ALICE_KEY, BOB_KEY])
    assert ALICE_KEY != BOB_KEY


def test_it_round_trips(alice_keys):
    token = encrypt(VALUE)
    assert isinstance(token, str)
    assert decrypt(token) == VALUE


def test_it_round_trips_the_empty_string(alice_keys):
    assert decrypt(encrypt("")) == ""


def test_it_makes_a_token_that_is_not_the_plaintext(alice_keys):
    token = encrypt(VALUE)
    assert VALUE not in token
    assert "p4ssw0rd" not in token
    # Fernet tokens carry a random IV: the same value never gives the same token twice.
    assert encrypt(VALUE) != token


def test_it_refuses_to_encrypt_a_non_string(alice_keys):
    with pytest.raises(TypeError):
        encrypt(b"bytes")  # type: ignore[arg-type]


def test_it_raises_on_a_wrong_key_and_never_returns_the_ciphertext(settings):
    settings.EXECUTOR_FERNET_KEYS = [ALICE_KEY]
    token = encrypt(VALUE)
    settings.EXECUTOR_FERNET_KEYS = [BOB_KEY]
    with pytest.raises(EncryptionError) as excinfo:
        decrypt(token)
    message = str(excinfo.value)
    assert "cannot be decrypted with the configured EXECUTOR_FERNET_KEYS" in message
    assert "wrong key, or a key was dropped before rotation" in message
    assert token not in message
    assert BOB_KEY not in message
    assert excinfo.value.__cause__ is None


def test_it_raises_on_a_garbled_token(alice_keys):
    for garbage in ["", "not-a-token", "gAAAAA" + "x" * 80, "ünïcode"]:
        with pytest.raises(EncryptionError):
            decrypt(garbage)


def test_it_raises_when_no_keys_are_set(settings):
    settings.EXECUTOR_FERNET_KEYS = []
    with pytest.raises(EncryptionError, match="EXECUTOR_FERNET_KEYS is not set"):
        encrypt(VALUE)
    with pytest.raises(EncryptionError, match="EXECUTOR_FERNET_KEYS is not set"):
        decrypt("gAAAAA")


def test_it_raises_when_the_setting_is_missing(settings):
    del settings.EXECUTOR_FERNET_KEYS
    with pytest.raises(EncryptionError, match="EXECUTOR_FERNET_KEYS is not set"):
        encrypt(VALUE)


def test_it_names_the_position_of_a_malformed_key_and_not_the_key():
    malformed = "this-is-not-a-fernet-key-but-looks-secret"
    with pytest.raises(EncryptionError) as excinfo:
        check_keys([ALICE_KEY, malformed, BOB_KEY])
    message = str(excinfo.value)
    assert "#2 of 3" in message
    assert malformed not in message
    assert ALICE_KEY not in message
    assert BOB_KEY not in message
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


@pytest.mark.parametrize(
    "malformed",
    ["", "short", ALICE_KEY[:-4], ALICE_KEY + "AAAA", "!" * 44, None],
)
def test_it_rejects_malformed_keys(malformed):
    with pytest.raises(EncryptionError, match="#1 of 1"):
        check_keys([malformed])


def test_it_raises_loudly_on_use_with_a_malformed_key(settings):
    settings.EXECUTOR_FERNET_KEYS = [BOB_KEY, "garbage"]
    with pytest.raises(EncryptionError, match="#2 of 2"):
        encrypt(VALUE)


def test_it_rejects_an_empty_key_list():
    with pytest.raises(EncryptionError, match="EXECUTOR_FERNET_KEYS is not set"):
        check_keys([])


def test_it_generates_valid_distinct_keys():
    key = generate_key()
    check_keys([key])
    Fernet(key)
    assert generate_key() != key


def test_it_rotates_to_the_first_key(settings):
    settings.EXECUTOR_FERNET_KEYS = [ALICE_KEY]
    old_token = encrypt(VALUE)

    # Step 1: the new key goes first, the old one stays; old values still read.
    settings.EXECUTOR_FERNET_KEYS = [BOB_KEY, ALICE_KEY]
    assert decrypt(old_token) == VALUE
    # New values are written under the new key.
    assert Fernet(BOB_KEY).decrypt(encrypt(VALUE).encode()).decode() == VALUE

    # Step 2: re-encrypt.
    new_token = rotate(old_token)
    assert new_token != old_token

    # Step 3: drop the old key; rotated values still read.
    settings.EXECUTOR_FERNET_KEYS = [BOB_KEY]
    assert decrypt(new_token) == VALUE
    assert rotate(new_token) != new_token


def test_it_fails_loudly_for_values_not_rotated_before_the_old_key_was_dropped(settings):
    settings.EXECUTOR_FERNET_KEYS = [ALICE_KEY]
    old_token = encrypt(VALUE)

    settings.EXECUTOR_FERNET_KEYS = [BOB_KEY]
    with pytest.raises(EncryptionError, match="dropped before rotation"):
        decrypt(old_token)
    with pytest.raises(EncryptionError, match="dropped before rotation"):
        rotate(old_token)

    # Putting the old key back (after the new one) recovers them.
    settings.EXECUTOR_FERNET_KEYS = [BOB_KEY, ALICE_KEY]
    assert decrypt(old_token) == VALUE


def test_it_rejects_two_keys_pasted_together_without_a_comma():
    with pytest.raises(EncryptionError, match="#1 of 1"):
        check_keys([BOB_KEY + ALICE_KEY])


@pytest.mark.django_db
def test_rotate_secrets_re_encrypts_everything_under_the_new_key(settings):
    old_key, new_key = generate_key(), generate_key()
    settings.EXECUTOR_FERNET_KEYS = [old_key]
    secret = Secret(scope=SecretScope.PLATFORM, name="alice_token")
    secret.set_value("v-123")
    secret.save()

    settings.EXECUTOR_FERNET_KEYS = [new_key, old_key]
    call_command("rotate_secrets")

    settings.EXECUTOR_FERNET_KEYS = [new_key]
    secret.refresh_from_db()
    assert secret.reveal() == "v-123"


@pytest.mark.django_db
def test_rotate_secrets_stops_without_changes_when_a_value_is_unreadable(settings):
    settings.EXECUTOR_FERNET_KEYS = [generate_key()]
    secret = Secret(scope=SecretScope.PLATFORM, name="bob_token")
    secret.set_value("v-456")
    secret.save()
    before = Secret.objects.get().encrypted_value

    settings.EXECUTOR_FERNET_KEYS = [generate_key()]
    with pytest.raises(CommandError, match="cannot be decrypted"):
        call_command("rotate_secrets")
    assert Secret.objects.get().encrypted_value == before


def test_the_system_check_reports_a_missing_key(settings):
    settings.EXECUTOR_FERNET_KEYS = []
    errors = check_fernet_keys(None)
    assert [error.id for error in errors] == ["packages.E001"]
    assert "EXECUTOR_FERNET_KEYS is not set" in errors[0].msg
