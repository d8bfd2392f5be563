"""The enrich section's IAM: deploy/iam/enrich*.json and the template grant exactly what the code calls."""

from __future__ import annotations

import json
import re

from tests.integration.test_aws_stack import branches, template
from tests.integration.test_deploy import DEPLOY, ROOT, action, granted_actions


def enrich_calls() -> set[str]:
    """The IAM actions of the EC2 calls in streamer/enrich/ and the STS call that assumes the roles."""
    code = (ROOT / "streamer" / "enrich" / "ec2.py").read_text()
    needed = {action("ec2", api) for api in re.findall(r"\bclient\.(\w+)\(", code)}
    aws = (ROOT / "streamer" / "aws.py").read_text()
    needed |= {action("sts", api) for api in re.findall(r"\bsts\.(\w+)\(", aws)}
    return needed


def test_the_policies_grant_exactly_what_enrichment_calls() -> None:
    assert enrich_calls() == {"ec2:DescribeNetworkInterfaces", "ec2:DescribeTags", "sts:AssumeRole"}
    streamer = json.loads((DEPLOY / "iam" / "enrich.json").read_text())
    assert granted_actions(streamer) == enrich_calls()
    member = json.loads((DEPLOY / "iam" / "enrich-role.json").read_text())  # the role in each other account
    assert granted_actions(member) == enrich_calls() - {"sts:AssumeRole"}
    trust = json.loads((DEPLOY / "iam" / "enrich-role-trust.json").read_text())
    assert granted_actions(trust) == {"sts:AssumeRole"}


def test_the_template_grants_it_only_when_asked() -> None:
    doc = template()
    policy = doc["Resources"]["StreamerEnrichPolicy"]
    assert policy["Condition"] == "EnrichOn"
    assert doc["Parameters"]["EnrichInterfaceContext"]["Default"] == "false"
    with_roles, own_account = branches(policy["Properties"]["PolicyDocument"]["Statement"])
    assert {a for s in with_roles for a in granted_actions({"Statement": [s]})} == enrich_calls()
    assert {a for s in own_account for a in granted_actions({"Statement": [s]})} == enrich_calls() - {"sts:AssumeRole"}
    assert with_roles[1]["Resource"] == {"Ref": "EnrichRoleArns"}  # only the roles named, never "*"


def test_the_template_deploys_the_enrich_policy_into_moto_when_asked(aws: str) -> None:
    from tests.integration.conftest import boto
    from tests.integration.test_aws_stack import created, deploy

    roles = "arn:aws:iam::111111111111:role/streamer-enrich,arn:aws:iam::222222222222:role/streamer-enrich"
    deploy(aws, "s3-sqs", "enriched", EnrichInterfaceContext="true", EnrichRoleArns=roles)
    deploy(aws, "s3-sqs", "plain")
    assert "StreamerEnrichPolicy" not in created(aws, "plain")  # least privilege by default
    arn = created(aws, "enriched")["StreamerEnrichPolicy"]
    iam = boto("iam", aws)
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    doc = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    assert granted_actions(doc) == enrich_calls()
    (assume,) = [s for s in doc["Statement"] if s["Sid"] == "AssumeEnrichRoles"]
    assert assume["Resource"] == roles.split(",")
