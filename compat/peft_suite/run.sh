#!/usr/bin/env bash
# Run Hugging Face PEFT's own tests/test_custom_models.py on peftkit, and on real PEFT as the baseline.
#
#   compat/peft_suite/run.sh PEFT_CHECKOUT [PYTHON]
#
# PEFT_CHECKOUT is a git checkout (or bare mirror) of huggingface/peft; its tests are copied out of
# HEAD unchanged. PYTHON (default .venv/bin/python) must have peftkit, its plugins and the real peft
# installed. Only the cases of the methods peftkit implements run (select_methods.py). The baseline
# imports the real peft; the second run puts shim/ first on the path, so `import peft` is peftkit.
# Writes baseline.xml, peftkit.xml and results.md into $OUT (default: a new temporary folder).
set -euo pipefail
peft_repo=${1:?usage: run.sh PEFT_CHECKOUT [PYTHON]}
here=$(cd "$(dirname "$0")" && pwd)
python=${2:-$here/../../.venv/bin/python}
python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python")  # absolute, symlink kept: it is the venv's
out=${OUT:-$(mktemp -d)}
mkdir -p "$out/tests"
git_dir=$peft_repo
[ -d "$peft_repo/.git" ] && git_dir=$peft_repo/.git
for f in __init__.py conftest.py testing_common.py testing_utils.py test_custom_models.py; do
  git --git-dir="$git_dir" show "HEAD:tests/$f" > "$out/tests/$f"
done
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$out"
run() {  # run NAME EXTRA_PYTHONPATH
  PYTHONPATH="$2$here:$here/stubs" "$python" -m pytest -p select_methods tests/test_custom_models.py \
    -q -W ignore -p no:cacheprovider --junitxml="$out/$1.xml" > "$out/$1.log" 2>&1 || true
  tail -n 1 "$out/$1.log"
}
echo "PEFT $(git --git-dir="$git_dir" log -1 --format='%h %cs') on $("$python" -c 'import peft; print(peft.__version__)')"
run baseline ""
run peftkit "$here/shim:"
"$python" "$here/compare.py" "$out/baseline.xml" "$out/peftkit.xml" | tee "$out/results.md"
echo "results: $out/results.md"
