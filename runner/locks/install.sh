#!/bin/sh
# Installs one flavor of the runner image. runner/Dockerfile runs it as root, at build time:
#
#   install.sh FLAVOR WHEELS SRC
#
# FLAVOR is runner, runner-ml or runner-gpu; WHEELS a folder holding the project's wheel;
# SRC a copy of runner/ (requirements.txt and locks/). What a flavor adds comes from the
# environment: TORCH_INDEX, an index to take torch and torchvision from before anything
# else (the PyTorch CPU index for runner-ml), and NLTK_CORPORA, nltk corpora to download
# into NLTK_DATA.
set -eu

flavor=$1
wheels=$2
src=$3
lock=$src/locks/$flavor.txt
requirements=$src/locks/$flavor.in
if [ ! -f "$lock" ] || [ ! -f "$requirements" ]; then
    echo "error: no lock for flavor '$flavor': expected $lock and $requirements" >&2
    exit 1
fi

# the kai user: numeric uid/gid 10001, home /tmp (the only writable path in the pod)
groupadd --gid 10001 kai
useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin kai

# The lock stays in the image: whatever is installed on top of it (kai build) goes through
# `pip install -c /opt/kai/constraints.txt`, so it cannot move these pins.
install -d -m 0755 /opt/kai
install -m 0644 "$lock" /opt/kai/constraints.txt
constraints=/opt/kai/constraints.txt

# The runner from the project's wheel, without its dependencies (those are the renderer's
# too); then the flavor's requirements, the runner's own among them, under the lock.
pip install --no-deps "$wheels"/*.whl
if [ -n "${TORCH_INDEX:-}" ]; then
    # torch and torchvision alone from that index (2.14.1+cpu satisfies torch==2.14.1);
    # everything else, their own dependencies too, from PyPI below
    pip install --no-deps -c "$constraints" --index-url "$TORCH_INDEX" torch torchvision
fi
pip install -c "$constraints" -r "$requirements"

purelib=$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
# the renderer shares the distribution: the image carries none of it
rm -rf "$purelib/renderer"
for corpus in ${NLTK_CORPORA:-}; do
    # extracted (as root, automatically) and readable by every user
    python -m nltk.downloader --exit-on-error --quiet --dir "$NLTK_DATA" "$corpus"
done
# no .pyc is written at run time (read-only root, PYTHONDONTWRITEBYTECODE): compile now
python -m compileall -q "$purelib"
python -c "import runner.__main__, runner.node, runner.entrypoint, grpc, nats, grpc_tools"
