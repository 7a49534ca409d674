"""Address folding: the forms a robot or forger varies must count as one mailbox."""

from mailgate.addresses import domain_of, fold_address


def test_plus_suffixes_and_case_fold_to_one_mailbox() -> None:
    forms = ["victim+1@example.net", "Victim+20@Example.NET", "VICTIM@example.net.", "victim@EXAMPLE.net"]
    assert {fold_address(a) for a in forms} == {"victim@example.net"}


def test_different_mailboxes_stay_different() -> None:
    assert fold_address("alice@example.net") != fold_address("alice@example.org")
    assert fold_address("alice.b@example.net") != fold_address("aliceb@example.net")


def test_a_local_part_that_is_only_a_suffix_is_kept() -> None:
    assert fold_address("+tag@example.net") == "+tag@example.net"


def test_domain_of() -> None:
    assert domain_of("Bot-7f3a@Robots.Example.COM") == "robots.example.com"
    assert domain_of("no-at-sign") == ""
