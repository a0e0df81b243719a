#!/usr/bin/env bash
# Prove that each plugin installs and works on its own, in an environment holding only the core:
# one base venv (torch + modality-hub), then per plugin a hard-linked copy of it where only that
# plugin (and what its pyproject declares) is pip-installed, then its sample is embedded with its demo encoder.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
base=.venv-core
export HF_HUB_OFFLINE=1
if [ ! -f "$base/.ready" ]; then
  rm -rf "$base"
  "$PYTHON" -m venv "$base"
  "$base/bin/python" -m pip install -q --upgrade pip "setuptools>=77,<82" wheel
  "$base/bin/python" -m pip install -q -c constraints-dev.txt torch torchaudio
  touch "$base/.ready"
fi
"$base/bin/python" -m pip install -q --force-reinstall --no-deps . && "$base/bin/python" -m pip install -q -c constraints-dev.txt .
# the core alone: the CLI works, and knows nothing of the starter pack (a plugin)
# (help texts are captured first: `cmd | grep -q` under pipefail fails when grep stops reading early;
# `python -m hub.cli`, not bin/mhub: the hard-linked venvs share the base venv's script, whose shebang is the base)
top=$(cd /tmp && "$OLDPWD/$base/bin/python" -m hub.cli --help) && demo=$(cd /tmp && "$OLDPWD/$base/bin/python" -m hub.cli demo --help) \
  || { echo "core CLI failed"; exit 1; }
if grep -q starter-pack <<<"$top" || grep -q -- --pack <<<"$demo"; then echo "the core CLI names the starter pack"; exit 1; fi
echo "standalone core: mhub works without plugins"
for dir in plugins/*/; do
  name=$(basename "$dir")
  [ "$name" = starter ] && continue  # needs the five modality plugins: checked below
  env=".venv-alone-$name"
  rm -rf "$env"
  cp -al "$base" "$env"
  "$env/bin/python" -m pip install -q -c constraints-dev.txt "./$dir"
  # run from outside the repository so `hub` is imported from the venv, not from the working tree
  (cd /tmp && "$OLDPWD/$env/bin/python" - "$name") <<'PY'
import sys
from hub import Hub

h = Hub()
want = "3d" if sys.argv[1] == "3d" else sys.argv[1]
mods = h.modalities()
assert mods == [want], f"expected only {want!r} installed, got {mods}"
errors = [p for p in h.plugins() if not p.ok]
assert not errors, errors
import hub
assert "site-packages" in hub.__file__, f"hub imported from {hub.__file__}, not from the venv"
mod = h.registry.modality(want)
offline = h.registry.list_encoders(modality=want, pretrained=False)  # weights-free presets: no download needed
name = mod.demo_encoder if mod.demo_encoder in offline else offline[0]
te = h.embed(mod.sample(), modality=want, encoder=name)
print(f"standalone {want}: {name} -> {int(te.lengths[0])} tokens x {te.dim}")
PY
  rm -rf "$env"
done
# the starter plugin with only what it declares (the five modality plugins, from this repository)
env=".venv-alone-starter"
rm -rf "$env"
cp -al "$base" "$env"
"$env/bin/python" -m pip install -q -c constraints-dev.txt ./plugins/starter ./plugins/text ./plugins/image \
  ./plugins/audio ./plugins/graph ./plugins/3d
top=$(cd /tmp && "$OLDPWD/$env/bin/python" -m hub.cli --help) && demo=$(cd /tmp && "$OLDPWD/$env/bin/python" -m hub.cli demo --help) \
  || { echo "mhub failed with the starter plugin installed"; exit 1; }
grep -q starter-pack <<<"$top" && grep -q -- --pack <<<"$demo" || { echo "starter plugin did not register its commands"; exit 1; }
(cd /tmp && "$OLDPWD/$env/bin/python" -) <<'PY'
from hub import Hub
import hub_starter

h = Hub()
errors = [p for p in h.plugins() if not p.ok]
assert not errors, errors
data = hub_starter.build_data("graph", 0, per_class=2)
print(f"standalone starter: mhub starter-pack / eval registered; graph data {len(data)} items")
PY
rm -rf "$env"
for dir in adapters/*/; do
  name=$(basename "$dir")
  env=".venv-alone-adapter-$name"
  rm -rf "$env"
  cp -al "$base" "$env"
  "$env/bin/python" -m pip install -q -c constraints-dev.txt "./$dir"
  (cd /tmp && "$OLDPWD/$env/bin/python" -) <<'PY'
from hub import Hub

h = Hub()
assert h.modalities() == [], h.modalities()
errors = [p for p in h.plugins() if not p.ok]
assert not errors, errors
lm = h.attach("tiny-llama")
text = lm.generate("hello", max_new_tokens=4)
print(f"standalone adapter {h.backbones()}: tiny-llama generated {text!r}")
PY
  rm -rf "$env"
done
echo "every plugin and adapter installs and works alone"
