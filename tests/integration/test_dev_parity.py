"""`kai dev` gives a node the files its pod gets: the rendered ConfigMap's, read-only.

A version built here reads a data file through ctx.path, imports shared code from src/,
takes a message type from a proto its main proto imports (next to a stale `*_pb2.py`),
and a second node tries to write into its own folder. Run with `kai dev --call`.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from local_run import kai, write_version

from renderer.cli.call import EXIT_INPUT
from renderer.cli.dev import find_project, render_local
from renderer.validate import load_version
from runner.supervisor import free_port

pytestmark = pytest.mark.integration

PROTO = """\
    syntax = "proto3";
    package parity;
    import "words.proto";
    message Request { string name = 1; }
    message Response { string json = 1; }
    service Entrypoint { rpc Look (Request) returns (Response) {}; }
"""

WORDS_PROTO = """\
syntax = "proto3";
package parity;
message Found { string name = 1; string value = 2; repeated string read = 3;
                bool ignored_visible = 4; bool docs_visible = 5; }
"""

# Generated from an older words.proto: importing it would break the node.
STALE_PB2 = 'raise ImportError("stale words_pb2: generated from an older words.proto")\n'

LOOKUP = """\
    import json
    import os

    import common.text
    from public_input_pb2 import Request
    from words_pb2 import Found


    def rel(ctx, path):
        return os.path.relpath(os.path.realpath(path), os.path.realpath(ctx.path(".")))


    def handler(ctx, data: Request):
        with open(ctx.path("data/lookup.json"), encoding="utf-8") as f:
            value = json.load(f)[data.name]
        read = [ctx.path("data/lookup.json"), common.text.__file__, __file__]
        return Found(name=data.name, value=common.text.shout(value),
                     read=[p + "|" + rel(ctx, p) for p in read],
                     ignored_visible=os.path.exists(ctx.path("private/key.txt")),
                     docs_visible=os.path.exists(ctx.path("docs/guide.md")))
"""

WRITER = """\
    import errno
    import json
    import os
    import tempfile

    from public_input_pb2 import Response
    from words_pb2 import Found


    def attempt(path):
        try:
            with open(path, "w") as f:
                f.write("x")
        except OSError as exc:
            return errno.errorcode[exc.errno]
        return "written"


    def handler(ctx, data: Found):
        here = os.path.dirname(os.path.abspath(__file__))
        with tempfile.NamedTemporaryFile() as tmp:
            tmp_ok = os.path.isfile(tmp.name)
        try:
            os.chmod(here, 0o755)
            chmod = "done"
        except OSError as exc:
            chmod = errno.errorcode[exc.errno]
        return Response(json=json.dumps({
            "name": data.name, "value": data.value, "read": list(data.read),
            "ignored_visible": data.ignored_visible, "docs_visible": data.docs_visible,
            "own_folder": attempt(os.path.join(here, "out.txt")),
            "over_source": attempt(os.path.abspath(__file__)),
            "chmod": chmod, "tmp_ok": tmp_ok, "uid": os.getuid()}))
"""


def build(root: Path) -> Path:
    version = write_version(root, "parity-v1", PROTO, {"lookup": LOOKUP, "writer": WRITER},
                            {"look": ("Look", ["lookup", "writer"])})
    (version / "words.proto").write_text(WORDS_PROTO)
    (version / "words_pb2.py").write_text(STALE_PB2)
    (version / "data").mkdir()
    (version / "data" / "lookup.json").write_text(json.dumps({"ada": "lovelace"}))
    (version / "src" / "common").mkdir()
    (version / "src" / "common" / "text.py").write_text(textwrap.dedent("""\
        def shout(text):
            return text.upper() + "!"
    """))
    (version / "private").mkdir()
    (version / "private" / "key.txt").write_text("not shipped")
    (version / "docs").mkdir()
    (version / "docs" / "guide.md").write_text("# kept in git, not shipped\n")
    (version / ".kaiignore").write_text("private/\n")
    krt = (version / "krt.yml").read_text()
    # a node on an image of its own: kai dev says it runs it on this machine's Python
    krt = krt.replace("    src: src/writer/main.py",
                      "    src: src/writer/main.py\n    image: registry.example/team/writer:2")
    krt = krt.replace("  - name: writer\n    image: konstellation/kre-py:1.23.0\n",
                      "  - name: writer\n")
    (version / "krt.yml").write_text(krt)
    return version


def configmap_paths(version_dir: Path) -> set[str]:
    """The paths the rendered ConfigMap puts in the version volume."""
    version = load_version(version_dir)
    _, objects = render_local(find_project(version.directory), version)
    [cm] = [o for o in objects if o["kind"] == "ConfigMap"]
    [deployment] = [o for o in objects if o["kind"] == "Deployment"
                    and o["metadata"]["name"].endswith("-lookup")]
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"]
                if v.get("configMap", {}).get("name") == cm["metadata"]["name"]]
    keys = {*(cm.get("data") or {}), *(cm.get("binaryData") or {})}
    items = volume["configMap"]["items"]
    assert {i["key"] for i in items} == keys
    return {i["path"] for i in items}


def test_a_node_sees_the_configmaps_files_read_only(tmp_path: Path) -> None:
    version = build(tmp_path)
    shipped = configmap_paths(version)
    assert {"data/lookup.json", "src/common/text.py", "words_pb2.py"} <= shipped
    assert not {p for p in shipped if p.startswith(("private/", "docs/"))}

    argv = kai("dev", str(version), "--port", str(free_port()), "--web-port", str(free_port()),
               "--call", "Look", '{"name": "ada"}')
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    reply = json.loads(json.loads(done.stdout)["json"])

    # the right answer: the data file, the shared code and the imported proto's type (the
    # stale words_pb2.py shipped beside them is not what the node imports)
    assert (reply["name"], reply["value"]) == ("ada", "LOVELACE!")
    # every file the node read is one the ConfigMap ships, read from the run's folder
    run_dirs = list(tmp_path.glob("kai-dev-*"))
    assert run_dirs == []  # removed once kai dev ended
    for entry in reply["read"]:
        where, rel = entry.split("|")
        assert rel in shipped, entry
        assert str(tmp_path / "kai-dev-") in where and str(version) not in where, entry
    # what the ConfigMap leaves out is not there
    assert reply["ignored_visible"] is False
    assert reply["docs_visible"] is False
    # writes into the version's files fail, as on the pod's read-only mount (EROFS there)
    assert reply["own_folder"] == "EACCES"
    assert reply["over_source"] == "EACCES"
    assert reply["chmod"] == "EPERM"
    assert reply["tmp_ok"] is True  # its /tmp is writable
    assert not (version / "src" / "writer" / "out.txt").exists()

    lines = done.stderr.splitlines()
    custom = [line for line in lines if "is not the runner image" in line]
    assert custom == ["parity-v1-writer: image registry.example/team/writer:2 is not the "
                      "runner image; kai dev runs it with this machine's Python "
                      "environment instead"]
    if os.geteuid() == 0:
        # as the pod's user, or (its Python out of that user's reach) as root without
        # capabilities: one line says which, and the writes fail either way
        guard = [line for line in lines
                 if line.startswith("kai dev: the Python that runs the processes")]
        assert reply["uid"] == (10001 if not guard else 0), guard
        assert all("without capabilities" in line for line in guard)
        assert not any("writes into the version's files are not prevented" in line
                       for line in lines)


KRE_NODE = """\
    import json
    import os

    from public_input_pb2 import Request, Response


    def handler(ctx, data: Request):
        env = {k: v for k, v in os.environ.items() if k.startswith(("KRT_", "KAI_"))}
        with open(ctx.get_config("MODEL_CONF"), encoding="utf-8") as f:
            mounted = f.read()
        handler_file = os.path.join(os.environ["KRT_BASE_PATH"], os.environ["KRT_HANDLER_PATH"])
        return Response(json=json.dumps({
            "env": env, "model_conf": os.environ["MODEL_CONF"], "mounted": mounted,
            "api_key": os.environ["API_KEY"],
            "handler_is_this_file": os.path.samefile(handler_file, __file__)}))
"""

KRE_PROTO = """\
    syntax = "proto3";
    package kre;
    message Request { string name = 1; }
    message Response { string json = 1; }
    service Entrypoint { rpc Look (Request) returns (Response) {}; }
"""


def test_a_kre_node_reads_its_settings_and_config_files_from_the_environment(
        tmp_path: Path) -> None:
    """Code written for kre-py 1.23: os.environ["KRT_..."], and a config file's content in
    os.environ[NAME]; the mounted file and ctx.get_config stay."""
    version = write_version(tmp_path, "kre-v1", KRE_PROTO, {"legacy": KRE_NODE},
                            {"look": ("Look", ["legacy"])})
    krt = version / "krt.yml"
    krt.write_text(krt.read_text().replace(
        "nodes:", "config:\n  variables: [API_KEY]\n  files: [MODEL_CONF]\nnodes:"))
    conf = tmp_path / "model.yaml"
    conf.write_text("depth: 3\nname: «forêt»\n\n", encoding="utf-8")
    argv = kai("dev", str(version), "--port", str(free_port()), "--web-port", str(free_port()),
               "--config", "API_KEY=s3cret", "--config", f"MODEL_CONF=@{conf}",
               "--call", "Look", '{"name": "ada"}')
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    reply = json.loads(json.loads(done.stdout)["json"])

    env = reply["env"]
    assert {k for k in env if k.startswith("KRT_")} == {
        "KRT_BASE_PATH", "KRT_HANDLER_PATH", "KRT_NATS_SERVER", "KRT_NODE_ID",
        "KRT_NODE_NAME", "KRT_VERSION", "KRT_VERSION_ID"}
    assert env["KRT_VERSION"] == env["KRT_VERSION_ID"] == env["KAI_VERSION"] == "kre-v1"
    assert env["KRT_NODE_NAME"] == env["KRT_NODE_ID"] == env["KAI_NODE"] == "legacy"
    assert env["KRT_HANDLER_PATH"] == env["KAI_HANDLER"] == "src/legacy/main.py"
    # this machine's values, not the cluster's: the run's folder and the embedded NATS
    assert env["KRT_BASE_PATH"] == env["KAI_VERSION_DIR"]
    assert str(tmp_path / "kai-dev-") in env["KRT_BASE_PATH"]
    assert env["KRT_NATS_SERVER"] == env["KAI_NATS_URL"]
    assert env["KRT_NATS_SERVER"].startswith("nats://127.0.0.1:")
    assert reply["handler_is_this_file"] is True
    # the file's content, in the variable and in the mounted file
    assert reply["model_conf"] == reply["mounted"] == conf.read_text(encoding="utf-8")
    assert reply["api_key"] == "s3cret"


def test_kai_dev_refuses_a_config_file_too_large_for_the_environment(tmp_path: Path) -> None:
    version = write_version(tmp_path, "kre-v1", KRE_PROTO, {"legacy": KRE_NODE},
                            {"look": ("Look", ["legacy"])})
    krt = version / "krt.yml"
    krt.write_text(krt.read_text().replace("nodes:", "config:\n  files: [MODEL_CONF]\nnodes:"))
    conf = tmp_path / "model.bin"
    conf.write_bytes(b"x" * (128 * 1024))
    argv = kai("dev", str(version), "--port", str(free_port()), "--web-port", str(free_port()),
               "--config", f"MODEL_CONF=@{conf}")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == EXIT_INPUT, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: Deployment kre-v1-legacy: config file MODEL_CONF cannot be the environment "
        "variable MODEL_CONF, which the cluster sets too (the pod would not start): "
        "MODEL_CONF=<value> takes 131084 bytes, more than the 131072 one environment entry "
        "may (Linux MAX_ARG_STRLEN); keep it under 128 KiB and free of NUL bytes "
        "(docs/node-sdk.md)"]
    assert "Traceback" not in done.stderr
    assert list(tmp_path.glob("kai-dev-*")) == []
