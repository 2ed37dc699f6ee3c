"""renderer.diff: comparing trees, hash renames, git-style diffs, --stat and --name-status."""

from __future__ import annotations

import subprocess
from pathlib import Path

from renderer.atomic import read_tree, write_tree
from renderer.diff import (
    ADDED,
    CHANGED,
    REMOVED,
    RENAMED,
    compare_tree,
    diff_stat,
    name_status,
    patch,
    tree_changes,
    unified_diff,
)
from tests.conftest import git

TREE = {
    "kustomization.yaml": b"resources: []\n",
    "v1/deployment-a.yaml": b"kind: Deployment\n",
    "v1/service-v1.yaml": b"kind: Service\n",
}
OLD_CM = "v1/configmap-v1-files-0123456789.yaml"
NEW_CM = "v1/configmap-v1-files-abcdef0123.yaml"
BODY = b"".join(f"line {i}\n".encode() for i in range(200))


def test_compare_tree_and_diff(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    assert compare_tree(target, TREE) == [(p, ADDED) for p in sorted(TREE)]
    write_tree(target, TREE)
    assert compare_tree(target, TREE) == []
    assert unified_diff(target, TREE) == ""
    new = {**TREE, "v1/service-v1.yaml": b"kind: Service\nspec: {}\n", "v2/x.yaml": b"new\n"}
    del new["v1/deployment-a.yaml"]
    assert compare_tree(target, new) == [
        ("v1/deployment-a.yaml", REMOVED),
        ("v1/service-v1.yaml", CHANGED),
        ("v2/x.yaml", ADDED),
    ]
    diff = unified_diff(target, new, label="rendered/demo")
    assert ("diff --git a/rendered/demo/v1/deployment-a.yaml b/rendered/demo/v1/deployment-a.yaml\n"
            "deleted file mode 100644\n"
            "--- a/rendered/demo/v1/deployment-a.yaml\n+++ /dev/null\n") in diff
    assert "+++ b/rendered/demo/v1/service-v1.yaml\n" in diff and "+spec: {}\n" in diff
    assert "new file mode 100644\n--- /dev/null\n+++ b/rendered/demo/v2/x.yaml\n" in diff


def test_a_hash_rename_is_one_small_diff() -> None:
    current = {**TREE, OLD_CM: BODY}
    tree = {**TREE, NEW_CM: BODY.replace(b"line 100\n", b"line 100 changed\n")}
    changes = tree_changes(current, tree, "rendered/demo")
    assert [(c.status, c.old_path, c.path) for c in changes] == [
        (RENAMED, f"rendered/demo/{OLD_CM}", f"rendered/demo/{NEW_CM}")]
    text = patch(changes)
    assert f"rename from rendered/demo/{OLD_CM}\nrename to rendered/demo/{NEW_CM}\n" in text
    assert "similarity index 99%" in text
    body = [ln for ln in text.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
    assert body == ["-line 100", "+line 100 changed"]
    assert len(text.splitlines()) < 20  # not 400 lines of remove-and-add


def test_renames_pair_only_one_to_one_in_the_same_folder() -> None:
    other = "v2/configmap-v2-files-abcdef0123.yaml"
    # another folder: a removal and an addition, not a rename
    changes = tree_changes({OLD_CM: BODY}, {other: BODY})
    assert [c.status for c in changes] == [REMOVED, ADDED]
    # two candidates for one stem: ambiguous, so no pairing
    twin = "v1/configmap-v1-files-fedcba9876.yaml"
    changes = tree_changes({OLD_CM: BODY}, {NEW_CM: BODY, twin: BODY})
    assert sorted(c.status for c in changes) == [ADDED, ADDED, REMOVED]
    # names that differ elsewhere than in a hash, or in a hash of another length
    for old, new in (("v1/service-a.yaml", "v1/service-b.yaml"),
                     ("v1/cm-v1-files-0123.yaml", "v1/cm-v1-files-abcd.yaml"),
                     (OLD_CM, "v1/secret-v1-files-abcdef0123.yaml")):
        assert [c.status for c in tree_changes({old: BODY}, {new: BODY})] == [REMOVED, ADDED]


def test_patch_applies_with_git_apply(tmp_path: Path) -> None:
    """What `kai diff` prints is a patch git takes: applied, it gives the new tree."""
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q")
    current = {**TREE, OLD_CM: BODY, "v1/no-newline.yaml": b"a\nb"}
    tree = {"kustomization.yaml": b"resources: [x]\n", "v1/service-v1.yaml": TREE[
        "v1/service-v1.yaml"], NEW_CM: BODY + b"tail\n", "v1/no-newline.yaml": b"a\nc",
        "v3/empty.yaml": b""}
    write_tree(repo / "rendered/demo", current)
    text = patch(tree_changes(read_tree(repo / "rendered/demo"), tree, "rendered/demo"))
    (tmp_path / "p.diff").write_text(text)
    subprocess.run(["git", "apply", str(tmp_path / "p.diff")], cwd=repo, check=True)
    assert read_tree(repo / "rendered/demo") == tree


def test_stat_is_git_style() -> None:
    current = {**TREE, OLD_CM: BODY}
    tree = {"kustomization.yaml": b"resources: [a]\n", "v1/service-v1.yaml": b"kind: Service\n",
            NEW_CM: BODY + b"x\ny\n", "v2/new.yaml": b"a\n" * 300}
    stat = diff_stat(tree_changes(current, tree, "rendered/demo"))
    lines = stat.splitlines()
    assert lines[-1] == " 4 files changed, 303 insertions(+), 2 deletions(-)"
    rows = {ln.split("|")[0].strip(): ln.split("|")[1].strip() for ln in lines[:-1]}
    assert rows == {
        "rendered/demo/kustomization.yaml": "2 +-",
        "rendered/demo/v1/deployment-a.yaml": "1 -",
        "rendered/demo/v1/{configmap-v1-files-0123456789.yaml => "
        "configmap-v1-files-abcdef0123.yaml}": "2 +",  # scaled down, as git does
        "rendered/demo/v2/new.yaml": "300 " + "+" * 40,  # the widest bar is 40
    }
    assert len({ln.index("|") for ln in lines[:-1]}) == 1  # the bars line up
    assert diff_stat([]) == ""
    one = diff_stat(tree_changes({"a.yaml": b"x\n"}, {"a.yaml": b"y\n"}))
    assert one.splitlines()[-1] == " 1 file changed, 1 insertion(+), 1 deletion(-)"
    pure = diff_stat(tree_changes({}, {"a.yaml": b"x\n"}))
    assert pure.splitlines()[-1] == " 1 file changed, 1 insertion(+)"


def test_name_status() -> None:
    current = {**TREE, OLD_CM: BODY}
    tree = {"kustomization.yaml": b"x\n", NEW_CM: BODY, "v2/new.yaml": b"a\n",
            "v1/service-v1.yaml": TREE["v1/service-v1.yaml"]}
    assert name_status(tree_changes(current, tree, "r")) == (
        "M\tr/kustomization.yaml\n"
        f"R100\tr/{OLD_CM}\tr/{NEW_CM}\n"  # sorted by the new path
        "D\tr/v1/deployment-a.yaml\n"
        "A\tr/v2/new.yaml\n"
    )


def test_a_renamed_folder_shows_every_file_as_renamed() -> None:
    current = {"kustomization.yaml": b"a\n", "v1/x.yaml": b"same\n"}
    tree = {"kustomization.yaml": b"b\n", "v1/x.yaml": b"same\n", "new.yaml": b"n\n"}
    changes = tree_changes(current, tree, "rendered/new", "rendered/old")
    assert [(c.status, c.old_path, c.path) for c in changes] == [
        (RENAMED, "rendered/old/kustomization.yaml", "rendered/new/kustomization.yaml"),
        (ADDED, None, "rendered/new/new.yaml"),
        (RENAMED, "rendered/old/v1/x.yaml", "rendered/new/v1/x.yaml"),
    ]
    stat = diff_stat(changes)
    assert " rendered/{old => new}/v1/x.yaml " in stat
    assert "rendered/{old => new}/kustomization.yaml" in stat
    text = patch(changes)
    assert "similarity index 100%\nrename from rendered/old/v1/x.yaml\n" in text
