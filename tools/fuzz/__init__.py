"""Fuzzing of every codec and inbound parser: `python -m tools.fuzz TARGET|all --runs N`.

Targets live in `tools.fuzz.targets`; `tools.fuzz.engine` is a seeded mutation fuzzer (no native
dependency, used by CI for a short run and for the 10^6-input campaigns); `--engine atheris` runs the
same targets under atheris (coverage-guided libFuzzer) when the `fuzz` extra is installed. Crashing
inputs are saved to the crash folder and become regression inputs in `tools/fuzz/regressions/`.
"""
