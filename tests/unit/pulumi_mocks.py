"""Run the real __main__.py under Pulumi mocks with a stack file's config, recording every registration."""

from __future__ import annotations

import json
import os
import runpy
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks, settings

from tests.conftest import REPO

SIG_KEY, SECRET_SIG = "4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270"
MASTER_PASSWORD = "mock-master-password-7f3a"
GATE_APPLIED = [{"version": "0007", "checksum": "from-staging"}]
DEV_PASSWORDS = {
    "WISHLIST_ADMIN_PASSWORD": "dev-admin-pw-1111",
    "WISHLIST_MIGRATOR_PASSWORD": "dev-migrator-pw-2222",
    "WISHLIST_APP_PASSWORD": "dev-app-pw-3333",
    "WISHLIST_READONLY_PASSWORD": "dev-readonly-pw-4444",
}


class Mocks(pulumi.runtime.Mocks):
    """Outputs the real providers would compute; everything else echoes the inputs."""

    def __init__(self, master_password: str = MASTER_PASSWORD) -> None:
        self.master_password = master_password  # what Secrets Manager holds now (rotation: change it between runs)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        state = dict(args.inputs)
        name = args.name
        if args.typ == "aws:rds/cluster:Cluster":
            state |= {
                "endpoint": f"{name}.cluster-abc.us-east-1.rds.amazonaws.com",
                "readerEndpoint": f"{name}.cluster-ro-abc.us-east-1.rds.amazonaws.com",
                "masterUserSecrets": [
                    {
                        "secretArn": f"arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!{name}",
                        "secretStatus": "active",
                        "kmsKeyId": "k",
                    }
                ],
                "port": 5432,
                "clusterResourceId": f"cluster-{name.upper()}RESOURCEID",
            }
        elif args.typ == "aws:rds/proxy:Proxy":
            state |= {"endpoint": f"{name}.proxy-abc.us-east-1.rds.amazonaws.com", "name": name}
        elif args.typ == "aws:kms/key:Key":
            state |= {"arn": f"arn:aws:kms:us-east-1:123456789012:key/{name}", "keyId": name}
        elif args.typ == "aws:iam/role:Role":
            state |= {"arn": f"arn:aws:iam::123456789012:role/{name}"}
        elif args.typ == "pulumi:pulumi:StackReference":
            state = {"name": args.inputs.get("name"), "outputs": {"applied_migrations": GATE_APPLIED}}
        elif args.typ.startswith("aws:rds/") and "name" not in state:
            state["name"] = name
        return f"{name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "aws:secretsmanager/getSecretVersion:getSecretVersion":
            return {
                "secretString": json.dumps({"username": "wishlist_admin", "password": self.master_password}),
                "arn": args.args.get("secretId"),
                "id": "v1",
                "versionId": "v1",
                "secretId": args.args.get("secretId"),
            }
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": "123456789012", "arn": "arn:aws:iam::123456789012:user/ci", "userId": "ci", "id": "123456789012"}
        if args.token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}
        return {}


@dataclass
class Registration:
    urn: str
    type: str
    name: str
    inputs: dict[str, Any]
    protect: bool
    retain_on_delete: bool
    dependencies: list[str]
    provider: str
    additional_secret_outputs: list[str]
    secret_inputs: set[str]
    parent: str


class RecordingMonitor(mocks.MockMonitor):
    """Keeps the resource options MockResourceArgs does not expose (protect, retainOnDelete, dependencies)."""

    def __init__(self, m: Mocks) -> None:
        super().__init__(m)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            raw = json.loads(json.dumps(_struct_to_py(request.object)))
            secret_inputs = {k for k, v in raw.items() if isinstance(v, dict) and v.get(SIG_KEY) == SECRET_SIG}
            self.registrations.append(
                Registration(
                    urn=response.urn,
                    type=request.type,
                    name=request.name,
                    inputs=dict(self.resources[response.urn].state) if response.urn in self.resources else {},
                    protect=bool(request.protect),
                    retain_on_delete=bool(request.retainOnDelete),
                    dependencies=list(request.dependencies),
                    provider=request.provider,
                    additional_secret_outputs=list(request.additionalSecretOutputs),
                    secret_inputs=secret_inputs,
                    parent=request.parent,
                )
            )
        return response

    def ReadResource(self, request: Any) -> Any:
        response = super().ReadResource(request)
        self.registrations.append(
            Registration(
                urn=response.urn,
                type=request.type,
                name=request.name,
                inputs={"name": request.id, **self.resources[response.urn].state},
                protect=False,
                retain_on_delete=False,
                dependencies=list(request.dependencies),
                provider=request.provider,
                additional_secret_outputs=[],
                secret_inputs=set(),
                parent=request.parent,
            )
        )
        return response


def _struct_to_py(struct: Any) -> Any:
    from google.protobuf import json_format

    return json_format.MessageToDict(struct)


@dataclass
class Program:
    registrations: list[Registration]

    def of_type(self, typ: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == typ]

    def one(self, typ: str) -> Registration:
        found = self.of_type(typ)
        assert len(found) == 1, f"{len(found)} resources of type {typ}"
        return found[0]

    def named(self, name: str) -> Registration:
        return next(r for r in self.registrations if r.name == name)

    def urn_of(self, name: str) -> str:
        return self.named(name).urn


def stack_config(stack: str) -> dict[str, Any]:
    data = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())
    return dict(data.get("config") or {})


def run_program(
    stack: str, config: dict[str, Any] | None = None, environ: dict[str, str] | None = None, master_password: str = MASTER_PASSWORD
) -> Program:
    """Run __main__.py as the engine would, under mocks, and return what it registered."""
    cfg = stack_config(stack) if config is None else config
    monitor = RecordingMonitor(Mocks(master_password))
    saved = deepcopy(settings.SETTINGS)
    old_env = dict(os.environ)
    old_cwd = Path.cwd()
    for key in [k for k in os.environ if k.startswith("WISHLIST_")]:
        del os.environ[key]  # e.g. the dev cluster's passwords that scripts/env.sh exports
    os.environ.update(environ if environ is not None else DEV_PASSWORDS)
    os.chdir(REPO)
    try:
        mocks.set_mocks(Mocks(master_password), project="wishlist-infra", stack=stack, preview=False, monitor=monitor)
        pulumi.runtime.set_all_config({k: v if isinstance(v, str) else json.dumps(v) for k, v in cfg.items()})

        @pulumi.runtime.test
        def program() -> None:
            namespace = runpy.run_path(str(REPO / "__main__.py"), run_name="__main__")
            del namespace

        program()
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
        settings.configure(saved)
        pulumi.runtime.set_all_config({})
    return Program(monitor.registrations)


def iter_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from iter_strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from iter_strings(v)
