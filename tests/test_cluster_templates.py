"""The server-job templates (launch/) rendered from a recipe's `cluster:` block, and the recipe rules of a launched
run (no Slurm needed)."""

from __future__ import annotations

import subprocess

import pytest

from conftest import write_recipe
from finephrase.cluster.launch import cluster_runtime
from finephrase.cluster.templates import ServerJob, render_server_job
from finephrase.plan import resolve
from finephrase.recipe import RecipeError, load_recipe

JOB = ServerJob(endpoints_file="/shared/run/.finephrase/endpoints.txt", log_dir="/shared/run/.finephrase/logs/servers",
                job_name="fp-test-server", partition="hopper-prod", env_command="source /opt/venv/bin/activate")
TGI = {"server": "tgi", "model": "HuggingFaceTB/SmolLM2-1.7B-Instruct", "tokenizer": None, "gguf": None}


def recipe_with(tmp_path, generator: dict, cluster: dict):
    return load_recipe(write_recipe(tmp_path / "r.yaml", {"generator": generator, "cluster": cluster}))


def bash_syntax_ok(script: str) -> None:
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_tgi_on_pyxis_with_the_launcher_flags(tmp_path, demo_data):
    recipe = recipe_with(tmp_path, TGI, {"account": "lab", "qos": "high", "constraint": "h100",
                                         "environment": {"HF_HOME": "/scratch/hf"}, "max_concurrent_requests": 256})
    script = render_server_job(recipe, JOB)
    bash_syntax_ok(script)
    for line in ["#SBATCH --gpus=1", "#SBATCH --cpus-per-task=12", "#SBATCH --mem=120G", "#SBATCH --time=24:00:00",
                 "#SBATCH --partition=hopper-prod", "#SBATCH --account=lab", "#SBATCH --qos=high",
                 "#SBATCH --constraint=h100", "export HF_HOME=/scratch/hf", "source /opt/venv/bin/activate"]:
        assert line in script
    assert "srun --ntasks=1 --container-image='ghcr.io#huggingface/text-generation-inference:" in script
    for flag in ["--model-id HuggingFaceTB/SmolLM2-1.7B-Instruct", "--num-shard 1", "--max-concurrent-requests 256",
                 "--max-input-tokens 6144", "--max-total-tokens 8192", "--max-batch-prefill-tokens 16384"]:
        assert flag in script
    assert "trap cleanup EXIT" in script and '"$ENDPOINT" "$ENDPOINTS_FILE"' in script


@pytest.mark.parametrize("container,prefix", [("apptainer", "apptainer exec --nv docker://ghcr.io/huggingface/"),
                                              ("none", "  text-generation-launcher")])
def test_tgi_from_apptainer_or_a_local_binary(tmp_path, demo_data, container, prefix):
    script = render_server_job(recipe_with(tmp_path, TGI, {"container": container}), JOB)
    bash_syntax_ok(script)
    assert prefix in script and "--container-image" not in script


@pytest.mark.parametrize("kind,command", [("vllm", "vllm serve HuggingFaceTB/SmolLM2-1.7B-Instruct"),
                                          ("sglang", "python3 -m sglang.launch_server --model-path"),
                                          ("embedded", "from finephrase.inference.servers.llama_server import main")])
def test_other_servers(tmp_path, demo_data, kind, command):
    generator = TGI if kind != "embedded" else {"server": "embedded"}
    script = render_server_job(recipe_with(tmp_path, {**generator, "server": "openai" if kind != "embedded" else "embedded"},
                                           {"server": kind, "gpus": 2}), JOB)
    bash_syntax_ok(script)
    assert command in script
    if kind == "embedded":
        assert "--gpus" not in script and "--container-image" not in script  # llama.cpp on CPUs
    else:
        assert "#SBATCH --gpus=2" in script


def test_launched_recipe_needs_no_endpoints_and_reads_the_endpoints_file(tmp_path, demo_data):
    with pytest.raises(RecipeError, match="generator.endpoints or generator.endpoints_file is required"):
        resolve(load_recipe(write_recipe(tmp_path / "plain.yaml", {"generator": TGI})))
    recipe = recipe_with(tmp_path, TGI, {"time": 86400})  # an unquoted 24:00:00 in YAML 1.1
    assert recipe.cluster.time == "24:00:00"
    rt = cluster_runtime(recipe, str(tmp_path / "out"))
    assert rt.endpoints_file == str(tmp_path / "out" / ".finephrase" / "endpoints.txt")
    assert rt.protocol == "tgi-chat" and rt.model == "HuggingFaceTB/SmolLM2-1.7B-Instruct"


def test_status_and_stop_outside_a_launched_run_say_so(tmp_path):
    from conftest import run_cli

    for command in ("status", "stop"):
        proc = run_cli(command, str(tmp_path), check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "no jobs.json" in proc.stderr and "launched run" in proc.stderr


def test_launch_off_a_slurm_submit_node_says_so(tmp_path, demo_data):
    import os
    import sys

    from conftest import run_cli

    recipe = write_recipe(tmp_path / "r.yaml", {"generator": TGI, "cluster": {"servers": 1}})
    proc = run_cli("launch", str(recipe), "--output", str(tmp_path / "out"), check=False,
                   env={"PATH": os.path.dirname(sys.executable)})  # no Slurm tools on the PATH
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "not found: this machine is not a Slurm submit node" in proc.stderr and "--executor local" in proc.stderr
