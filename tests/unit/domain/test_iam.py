"""IAM-style policies: validation messages, wildcards, Deny over Allow, principals and conditions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backvault.domain.errors import InvalidParameterValueException
from backvault.domain.iam import (
    Decision,
    RequestContext,
    combine_decisions,
    evaluate_policies,
    validate_policy_document,
    wildcard_match,
)

ACCOUNT = "000000000000"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
VAULT = f"arn:aws:backup:local:{ACCOUNT}:backup-vault:main"
OTHER_VAULT = f"arn:aws:backup:local:{ACCOUNT}:backup-vault:archive"


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    """A policy document of the given statements."""
    return {"Version": "2012-10-17", "Statement": list(statements)}


def request(action: str, resource: str = "*", user: str = "alice") -> RequestContext:
    """A request by a user of the test account."""
    return RequestContext(
        action=action, resource=resource, principal_arn=f"arn:aws:iam::{ACCOUNT}:user/{user}", user_name=user
    )


def allow(action: Any, resource: Any = "*", **more: Any) -> dict[str, Any]:
    """An Allow statement."""
    return {"Effect": "Allow", "Action": action, "Resource": resource, **more}


def deny(action: Any, resource: Any = "*", **more: Any) -> dict[str, Any]:
    """A Deny statement."""
    return {"Effect": "Deny", "Action": action, "Resource": resource, **more}


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("not a policy", "must be a JSON object"),
        ({"Version": "2012-10-17"}, "Statement must be"),
        ({"Statement": []}, "Statement must be"),
        ({"Version": "2020-01-01", "Statement": [allow("*")]}, "Version '2020-01-01' is not supported"),
        (policy({"Effect": "Permit", "Action": "*", "Resource": "*"}), "Statement[0]: Effect must be"),
        (
            policy(allow("*"), {"Effect": "Allow", "Resource": "*"}),
            "Statement[1] must have exactly one of Action",
        ),
        (
            policy({"Effect": "Allow", "Action": "*", "NotAction": "x:y", "Resource": "*"}),
            "exactly one of Action",
        ),
        (policy({"Sid": "Reads", "Effect": "Allow", "Action": "*"}), "Statement[0] (Sid 'Reads') must have"),
        (policy(allow("ListBackupVaults")), "is not an action"),
        (policy(allow([])), "non-empty string or a non-empty list"),
        (policy(allow("*", "backup-vault:main")), "must be '*' or an ARN pattern"),
        (policy(allow("*", Principal="*")), "must not name a Principal"),
        (policy(allow("*", Effects="Allow")), "unknown member(s) Effects"),
        (
            policy(allow("*", Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})),
            "unsupported condition operator 'IpAddress'",
        ),
        (
            policy(allow("*", Condition={"StringEquals": {"aws:SourceVpc": "v"}})),
            "unsupported condition key 'aws:SourceVpc'",
        ),
    ],
)
def test_malformed_documents_are_refused_naming_the_problem(document: Any, expected: str) -> None:
    with pytest.raises(InvalidParameterValueException) as caught:
        validate_policy_document(document)
    assert "MalformedPolicyDocument" in caught.value.message
    assert expected in caught.value.message


def test_resource_policies_need_a_principal_of_a_known_form() -> None:
    with pytest.raises(InvalidParameterValueException, match="exactly one of Principal or NotPrincipal"):
        validate_policy_document(policy(deny("backup:*")), resource_policy=True)
    with pytest.raises(InvalidParameterValueException, match="Principal must be"):
        validate_policy_document(policy(deny("backup:*", Principal={"Service": "x"})), resource_policy=True)
    with pytest.raises(InvalidParameterValueException, match="12-digit account id or an IAM ARN"):
        validate_policy_document(policy(deny("backup:*", Principal={"AWS": "alice"})), resource_policy=True)


def test_a_single_statement_object_and_strings_are_normalised_to_lists() -> None:
    checked = validate_policy_document({"Statement": allow("backup:List*", VAULT)})
    assert checked == {
        "Version": "2008-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["backup:List*"], "Resource": [VAULT]}],
    }


# --- matching ---------------------------------------------------------------------------------------


def test_wildcards() -> None:
    assert wildcard_match("backup:List*", "backup:ListBackupVaults")
    assert wildcard_match("backup:Get?ackupPlan", "backup:GetBackupPlan")
    assert not wildcard_match("backup:Get?ackupPlan", "backup:GetBBackupPlan")
    assert wildcard_match("arn:aws:backup:*:backup-vault:*", VAULT)
    assert not wildcard_match("arn:aws:backup:*:backup-vault:prod-*", VAULT)
    # Regular-expression characters in a pattern are literal.
    assert not wildcard_match("arn:aws:backup:local:.*", VAULT)
    assert wildcard_match("a.b[c]", "a.b[c]")


@given(st.text(alphabet="ab*?.[]()+", max_size=8), st.text(alphabet="ab.[]()+", max_size=8))
def test_wildcard_match_agrees_with_a_reference_matcher(pattern: str, value: str) -> None:
    def reference(p: str, v: str) -> bool:
        if not p:
            return not v
        if p[0] == "*":
            return reference(p[1:], v) or (bool(v) and reference(p, v[1:]))
        if not v:
            return False
        return (p[0] == "?" or p[0] == v[0]) and reference(p[1:], v[1:])

    assert wildcard_match(pattern, value) is reference(pattern, value)


def test_actions_match_case_insensitively_resources_case_sensitively() -> None:
    document = policy(allow("BACKUP:listbackupvaults", VAULT))
    assert evaluate_policies([document], request("backup:ListBackupVaults", VAULT)) is Decision.ALLOW
    upper = VAULT.replace("main", "MAIN")
    assert evaluate_policies([document], request("backup:ListBackupVaults", upper)) is Decision.IMPLICIT_DENY


# --- evaluation -------------------------------------------------------------------------------------


def test_default_deny_allow_and_explicit_deny_wins() -> None:
    reader = policy(allow("backup:List*"), allow(["backup:Describe*", "backup:Get*"], "arn:aws:backup:*"))
    assert evaluate_policies([], request("backup:ListBackupVaults")) is Decision.IMPLICIT_DENY
    assert evaluate_policies([reader], request("backup:ListBackupVaults")) is Decision.ALLOW
    assert evaluate_policies([reader], request("backup:DescribeBackupVault", VAULT)) is Decision.ALLOW
    assert evaluate_policies([reader], request("backup:DeleteBackupVault", VAULT)) is Decision.IMPLICIT_DENY
    admin = policy(allow("*"))
    no_deletes = policy(deny("backup:Delete*", VAULT))
    assert evaluate_policies([admin, no_deletes], request("backup:DeleteBackupVault", VAULT)) is Decision.DENY
    assert evaluate_policies([no_deletes, admin], request("backup:DeleteBackupVault", VAULT)) is Decision.DENY
    assert evaluate_policies([admin, no_deletes], request("backup:DeleteBackupVault", OTHER_VAULT)) is (
        Decision.ALLOW
    )


def test_not_action_and_not_resource() -> None:
    everything_but_deletes = policy({"Effect": "Allow", "NotAction": "backup:Delete*", "Resource": "*"})
    assert evaluate_policies([everything_but_deletes], request("backup:CreateBackupVault")) is Decision.ALLOW
    assert evaluate_policies([everything_but_deletes], request("backup:DeleteBackupVault")) is (
        Decision.IMPLICIT_DENY
    )
    outside_main = policy({"Effect": "Allow", "Action": "backup:*", "NotResource": VAULT})
    assert (
        evaluate_policies([outside_main], request("backup:DeleteBackupVault", OTHER_VAULT)) is Decision.ALLOW
    )
    assert (
        evaluate_policies([outside_main], request("backup:DeleteBackupVault", VAULT))
        is Decision.IMPLICIT_DENY
    )


def test_resource_policy_principals() -> None:
    everyone = policy(deny("backup:DeleteRecoveryPoint", Principal="*"))
    assert evaluate_policies([everyone], request("backup:DeleteRecoveryPoint"), resource_policy=True) is (
        Decision.DENY
    )
    assert evaluate_policies([everyone], request("backup:DescribeRecoveryPoint"), resource_policy=True) is (
        Decision.IMPLICIT_DENY
    )
    only_alice = policy(allow("backup:*", Principal={"AWS": [ALICE]}))
    assert evaluate_policies([only_alice], request("backup:X"), resource_policy=True) is Decision.ALLOW
    assert evaluate_policies([only_alice], request("backup:X", user="bob"), resource_policy=True) is (
        Decision.IMPLICIT_DENY
    )
    account_root = policy(deny("backup:*", Principal={"AWS": f"arn:aws:iam::{ACCOUNT}:root"}))
    assert evaluate_policies([account_root], request("backup:X", user="bob"), resource_policy=True) is (
        Decision.DENY
    )
    other_account = policy(deny("backup:*", Principal={"AWS": "111111111111"}))
    assert evaluate_policies([other_account], request("backup:X"), resource_policy=True) is (
        Decision.IMPLICIT_DENY
    )
    all_but_alice = policy(
        {"Effect": "Deny", "Action": "backup:*", "Resource": "*", "NotPrincipal": {"AWS": ALICE}}
    )
    assert evaluate_policies([all_but_alice], request("backup:X"), resource_policy=True) is (
        Decision.IMPLICIT_DENY
    )
    assert evaluate_policies([all_but_alice], request("backup:X", user="bob"), resource_policy=True) is (
        Decision.DENY
    )


def test_conditions_on_the_user_name() -> None:
    own_vault = policy(
        allow("backup:*", "arn:aws:backup:*:backup-vault:*", Condition={"StringLike": {"aws:username": "a*"}})
    )
    assert evaluate_policies([own_vault], request("backup:X", VAULT)) is Decision.ALLOW
    assert evaluate_policies([own_vault], request("backup:X", VAULT, user="bob")) is Decision.IMPLICIT_DENY
    not_bob = policy(deny("*", Condition={"StringNotEqualsIgnoreCase": {"aws:username": "BOB"}}), allow("*"))
    assert evaluate_policies([not_bob], request("backup:X")) is Decision.DENY
    assert evaluate_policies([not_bob], request("backup:X", user="bob")) is Decision.ALLOW
    exact = policy(allow("*", Condition={"StringEquals": {"aws:PrincipalArn": [ALICE, "x"]}}))
    assert evaluate_policies([exact], request("backup:X")) is Decision.ALLOW
    assert evaluate_policies([exact], request("backup:X", user="alicia")) is Decision.IMPLICIT_DENY


def test_a_broken_stored_document_denies_instead_of_granting() -> None:
    broken = {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"Bogus": {}}}]}
    assert evaluate_policies([broken], request("backup:ListBackupVaults")) is Decision.DENY


def test_combining_decisions() -> None:
    assert combine_decisions([]) is Decision.IMPLICIT_DENY
    assert combine_decisions([Decision.IMPLICIT_DENY, Decision.ALLOW]) is Decision.ALLOW
    assert combine_decisions([Decision.ALLOW, Decision.DENY]) is Decision.DENY
