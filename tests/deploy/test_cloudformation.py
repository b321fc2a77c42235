"""deploy/cloudformation/: both templates pass cfn-lint with no error and no warning, a
known-bad template fails it (so that a clean result means something), and the values
cfn-lint does not check are what the connector needs.

cfn-lint runs in-process (`cfnlint.api.lint_file`), offline. The templates are read with
cfn-lint's own loader, so that `!Ref`, `!Sub`, `!If` and `!GetAtt` read as their long forms
(`{"Ref": ...}`).
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import cfn_yaml
from pydantic import BaseModel

from sfstream.cli.healthcheck import DEFAULT_PORT
from sfstream.engine.config import Config, RuntimeConfig

TEMPLATES = Path(__file__).parents[2] / "deploy" / "cloudformation"
FARGATE = TEMPLATES / "fargate-service.yaml"
LAMBDA = TEMPLATES / "lambda-scheduled.yaml"
BROKEN = Path(__file__).parent / "fixtures" / "broken-template.yaml"
HANDLER = "sfstream.runners.aws_lambda.handler"
REGIONS = ["us-east-1", "eu-west-1"]

# The only actions granted on every resource: they have no resource-level permissions.
UNSCOPED_ACTIONS = frozenset(
    {
        "ecr:GetAuthorizationToken",
        "ec2:CreateNetworkInterface",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSubnets",
        "ec2:DeleteNetworkInterface",
        "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses",
    }
)


def lint(path: Path) -> list[Any]:
    return list(lint_file(path, config=ManualArgs(regions=REGIONS)))


def load(path: Path) -> dict[str, Any]:
    template: dict[str, Any] = cfn_yaml.load(str(path))
    return template


def resources(template: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r["Properties"] for r in template["Resources"].values() if r["Type"] == kind]


def only(template: dict[str, Any], kind: str) -> dict[str, Any]:
    found = resources(template, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def parameter(template: dict[str, Any], value: Any) -> dict[str, Any]:
    """The parameter `value` refers to (`{"Ref": "Timeout"}`)."""
    assert isinstance(value, dict), f"{value} is not a parameter"
    assert set(value) == {"Ref"}, f"{value} is not a parameter"
    declared: dict[str, Any] = template["Parameters"][value["Ref"]]
    return declared


def branches(value: Any) -> list[Any]:
    """The values an `Fn::If` may take (`AWS::NoValue` left out); `[value]` otherwise."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        _, then, otherwise = value["Fn::If"]
        return [b for branch in (then, otherwise) for b in branches(branch)]
    if value == {"Ref": "AWS::NoValue"}:
        return []
    return [value]


def statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    """Every statement of the roles' inline policies, each branch of an `Fn::If`."""
    found = []
    for role in resources(template, "AWS::IAM::Role"):
        for policy in role.get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                found.extend(branches(statement))
    return found


def actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def environment_names(names: list[str]) -> None:
    """Every `SFSTREAM_<SECTION>__<FIELD>` name sets a field the configuration has."""
    for name in names:
        assert name.startswith("SFSTREAM_"), name
        if "__" not in name:
            assert name in {"SFSTREAM_CONFIG", "SFSTREAM_LAMBDA_MARGIN_S"}, name
            continue
        section, field = name.removeprefix("SFSTREAM_").lower().split("__")
        model = Config.model_fields[section].annotation
        assert isinstance(model, type), name
        assert issubclass(model, BaseModel), name
        assert field in model.model_fields, f"{name}: the configuration has no {section}.{field}"


# -- cfn-lint -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [FARGATE, LAMBDA], ids=lambda p: p.stem)
def test_template_has_no_lint_errors_or_warnings(path: Path) -> None:
    found = [m for m in lint(path) if m.rule.id[0] in "EW"]
    assert found == [], "\n".join(f"{m.rule.id} line {m.linenumber}: {m.message}" for m in found)


def test_the_broken_template_fails_lint() -> None:
    # The negative control: cfn-lint, as called above, finds each known mistake.
    ids = {m.rule.id for m in lint(BROKEN)}
    assert {
        "E3030",  # AttributeType STRING
        "E3039",  # key schema against attribute definitions
        "E1010",  # GetAtt of a resource that does not exist
        "E3717",  # Lambda Timeout over 900
        "E3048",  # Fargate with NetworkMode bridge
    } <= ids


# -- the Fargate service ------------------------------------------------------------------------


def test_fargate_container_drains_within_ecs_stop_timeout() -> None:
    template = load(FARGATE)
    task = only(template, "AWS::ECS::TaskDefinition")
    assert task["RequiresCompatibilities"] == ["FARGATE"]
    assert task["NetworkMode"] == "awsvpc"
    (container,) = task["ContainerDefinitions"]
    assert container["StopTimeout"] == 30
    assert container["HealthCheck"]["Command"] == ["CMD", "sfstream", "healthcheck"]
    assert container["PortMappings"][0]["ContainerPort"] == 9464 == DEFAULT_PORT
    environment = {
        e["Name"]: e["Value"] for item in container["Environment"] for e in branches(item)
    }
    environment_names([*environment, *(s["Name"] for s in branches(container["Secrets"])[0])])
    assert environment["SFSTREAM_OBSERVABILITY__METRICS_PORT"] == str(DEFAULT_PORT)
    assert environment["SFSTREAM_SECRETS__BACKEND"] == "aws"
    # The connector's own drain ends before ECS's SIGKILL.
    shutdown_s = float(environment["SFSTREAM_RUNTIME__SHUTDOWN_TIMEOUT_S"])
    assert shutdown_s == RuntimeConfig().shutdown_timeout_s
    assert shutdown_s + 5 <= container["StopTimeout"]
    # A secret injected by ECS comes from the one secret of the stack.
    (secret,) = branches(container["Secrets"])[0]
    assert secret["ValueFrom"] == {"Fn::Sub": "${SecretArn}:STATE_DSN::"}
    logs = container["LogConfiguration"]
    assert logs["LogDriver"] == "awslogs"
    assert {"awslogs-group", "awslogs-region", "awslogs-stream-prefix"} <= set(logs["Options"])


def test_fargate_tasks_share_the_streams_through_leases() -> None:
    template = load(FARGATE)
    service = only(template, "AWS::ECS::Service")
    assert service["DesiredCount"] == {"Ref": "Workers"}
    assert template["Parameters"]["Workers"]["Default"] == 1
    # A deployment overlaps old and new tasks: the leases keep one consumer per stream.
    deployment = service["DeploymentConfiguration"]
    assert (deployment["MinimumHealthyPercent"], deployment["MaximumPercent"]) == (100, 200)
    container = only(template, "AWS::ECS::TaskDefinition")["ContainerDefinitions"][0]
    environment = {e["Name"]: e["Value"] for e in container["Environment"] if "Name" in e}
    assert environment["SFSTREAM_STATE__COORDINATION"] == "leases"
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    assert network["Subnets"] == {"Ref": "PrivateSubnetIds"}


def test_fargate_security_group_is_egress_only() -> None:
    template = load(FARGATE)
    (group,) = resources(template, "AWS::EC2::SecurityGroup")
    assert "SecurityGroupIngress" not in group
    assert [
        (r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in group["SecurityGroupEgress"]
    ] == [("tcp", 443, 443)]
    # The database rule exists with PostgreSQL state only, to the database's group only.
    (database,) = resources(template, "AWS::EC2::SecurityGroupEgress")
    assert template["Resources"]["DatabaseEgress"]["Condition"] == "HasDatabaseSecurityGroup"
    assert database["DestinationSecurityGroupId"] == {"Ref": "DatabaseSecurityGroupId"}
    assert template["Parameters"]["DatabasePort"]["Default"] == 5432


def test_fargate_roles_are_least_privilege() -> None:
    template = load(FARGATE)
    execution = role_actions(template, "ExecutionRole")
    task = role_actions(template, "TaskRole")
    assert "secretsmanager:PutSecretValue" not in execution  # ECS only reads it
    assert {"secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"} <= set(task)
    assert not [a for a in task if a.startswith(("ecr:", "logs:"))]
    check_statements(template)


# -- the scheduled Lambda -----------------------------------------------------------------------


def test_lambda_function_values() -> None:
    template = load(LAMBDA)
    function = only(template, "AWS::Lambda::Function")
    assert function["ReservedConcurrentExecutions"] == 1
    timeout = parameter(template, function["Timeout"])
    assert timeout["MaxValue"] <= 900
    assert timeout["Default"] == 300
    assert function["VpcConfig"]["SubnetIds"] == {"Ref": "PrivateSubnetIds"}
    # The handler, for a zip package and for an image, is the documented entry point.
    assert branches(function["Handler"]) == [HANDLER]
    assert branches(function["ImageConfig"]) == [{"Command": [HANDLER]}]
    module, _, attribute = HANDLER.rpartition(".")
    assert callable(getattr(importlib.import_module(module), attribute))
    environment_names(list(function["Environment"]["Variables"]))
    assert function["Environment"]["Variables"]["SFSTREAM_STATE__BACKEND"] == "dynamodb"


def test_lambda_schedule_passes_the_configuration() -> None:
    template = load(LAMBDA)
    rule = only(template, "AWS::Events::Rule")
    expression = parameter(template, rule["ScheduleExpression"])
    assert expression["Default"] == "rate(5 minutes)"
    assert re.fullmatch(expression["AllowedPattern"], expression["Default"])
    assert not re.fullmatch(expression["AllowedPattern"], "every 5 minutes")
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["Function", "Arn"]}
    config_path = template["Parameters"]["ConfigPath"]["Default"]
    event = json.loads(target["Input"]["Fn::Sub"].replace("${ConfigPath}", config_path))
    assert event == {"config": config_path}
    permission = only(template, "AWS::Lambda::Permission")
    assert permission["Principal"] == "events.amazonaws.com"
    assert permission["SourceArn"] == {"Fn::GetAtt": ["Schedule", "Arn"]}


def test_lambda_state_table() -> None:
    template = load(LAMBDA)
    table = only(template, "AWS::DynamoDB::Table")
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert [(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]] == [
        ("pk", "HASH"),
        ("sk", "RANGE"),
    ]
    assert template["Resources"]["StateTable"]["DeletionPolicy"] == "Retain"
    # The Fargate stack's table has the same keys.
    fargate = only(load(FARGATE), "AWS::DynamoDB::Table")
    assert fargate["KeySchema"] == table["KeySchema"]


def test_lambda_role_is_least_privilege() -> None:
    template = load(LAMBDA)
    granted = {a for s in statements(template) for a in actions(s)}
    assert {"secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"} <= granted
    assert "dynamodb:CreateTable" not in granted
    check_statements(template)


def role_actions(template: dict[str, Any], name: str) -> list[str]:
    """The actions the role `name` of `template` is granted."""
    role = {"Resources": {name: template["Resources"][name]}}
    return [action for statement in statements(role) for action in actions(statement)]


def check_statements(template: dict[str, Any]) -> None:
    """No wildcard action; `Resource: "*"` only for actions that cannot be scoped."""
    for statement in statements(template):
        assert statement["Effect"] == "Allow"
        for action in actions(statement):
            assert "*" not in action, action
            if statement["Resource"] == "*":
                assert action in UNSCOPED_ACTIONS, action
