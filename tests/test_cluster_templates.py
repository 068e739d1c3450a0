"""The server-job templates (launch/) rendered from a recipe's `cluster:` block, and the recipe rules of a launched
run (no Slurm needed)."""

from __future__ import annotations

import subprocess

import pytest
from conftest import write_recipe

from finephrase.cluster.launch import cluster_runtime
from finephrase.cluster.templates import ServerJob, render_server_job
from finephrase.errors import RecipeError
from finephrase.plan import resolve
from finephrase.recipe import load_recipe

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
                                         "environment": {"HF_HUB_ENABLE_HF_TRANSFER": "1"},
                                         "max_concurrent_requests": 256, "secrets": ["HF_TOKEN"]})
    script = render_server_job(recipe, JOB)
    bash_syntax_ok(script)
    for line in ["#SBATCH --gpus=1", "#SBATCH --cpus-per-task=12", "#SBATCH --mem=120G", "#SBATCH --time=24:00:00",
                 "#SBATCH --partition=hopper-prod", "#SBATCH --account=lab", "#SBATCH --qos=high",
                 "#SBATCH --constraint=h100", "export HF_HUB_ENABLE_HF_TRANSFER=1", "source /opt/venv/bin/activate",
                 "#SBATCH --export=ALL", "#SBATCH --signal=B:USR1@300", "trap deregister USR1"]:
        assert line in script
    # pyxis: the cache mounted, the job's environment (HF_HOME, the secrets, the API key) over the image's
    assert ("srun --ntasks=1 --container-image='ghcr.io#huggingface/text-generation-inference:3.3.6' "
            '--container-mounts="$HF_HOME:$HF_HOME" --container-env=HF_HOME,HF_HUB_ENABLE_HF_TRANSFER,HF_TOKEN,'
            "FINEPHRASE_API_KEY,API_KEY ") in script
    for flag in ["--model-id HuggingFaceTB/SmolLM2-1.7B-Instruct", "--num-shard 1", "--max-concurrent-requests 256",
                 "--max-batch-prefill-tokens 16384", '--master-port "$MASTER_PORT"',
                 '--shard-uds-path "${TMPDIR:-/tmp}/finephrase-tgi-${SLURM_JOB_ID:-$$}"']:
        assert flag in script
    # no context flags unless set: TGI reads the model's
    assert "--max-total-tokens" not in script and "--max-input-tokens" not in script
    assert "trap cleanup EXIT" in script and '"$ENDPOINT" "$ENDPOINTS_FILE"' in script


@pytest.mark.parametrize("container,prefix", [("apptainer", "apptainer exec --nv --bind "),
                                              ("none", "  exec text-generation-launcher")])
def test_tgi_from_apptainer_or_a_local_binary(tmp_path, demo_data, container, prefix):
    model = tmp_path / "models" / "smol"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"max_position_embeddings": 2048}')
    script = render_server_job(recipe_with(tmp_path, TGI, {"container": container, "model_path": str(model),
                                                           "secrets": ["HF_TOKEN"], "max_total_tokens": 8192,
                                                           "mounts": ["/scratch"]}), JOB)
    bash_syntax_ok(script)
    assert prefix in script and "--container-image" not in script
    # never above the model's own context (its config.json)
    assert "--max-total-tokens 2048" in script and "--max-input-tokens" not in script
    if container == "apptainer":
        assert f'--bind "$HF_HOME:$HF_HOME",{model}:{model},/scratch:/scratch --env "HF_HOME=$HF_HOME" ' in script
        assert 'export APPTAINERENV_HF_TOKEN="${HF_TOKEN}"' in script and "docker://ghcr.io/huggingface/" in script
        assert '--env "HF_TOKEN' not in script  # secrets stay off the command line


def test_secrets_by_name_only(tmp_path, demo_data):
    with pytest.raises(RecipeError, match=r"cluster.environment.HF_TOKEN looks like a secret.*cluster.secrets: \[HF_TOKEN\]"):
        recipe_with(tmp_path, TGI, {"environment": {"HF_TOKEN": "hf_abcdefghijklmnopqrstuvwx"}})
    with pytest.raises(RecipeError, match="looks like a secret"):
        recipe_with(tmp_path, TGI, {"environment": {"MY_VAR": "hf_abcdefghijklmnopqrstuvwx"}})
    with pytest.raises(RecipeError, match="list names only"):
        recipe_with(tmp_path, TGI, {"secrets": ["HF_TOKEN=hf_abcdefghijklmnopqrstuvwx"]})


@pytest.mark.parametrize("kind,command", [("vllm", "vllm serve HuggingFaceTB/SmolLM2-1.7B-Instruct"),
                                          ("sglang", "python3 -m sglang.launch_server --model-path"),
                                          ("embedded", "from finephrase.inference.servers.llama_server import main")])
def test_other_servers(tmp_path, demo_data, kind, command):
    generator = TGI if kind != "embedded" else {"server": "embedded"}
    script = render_server_job(recipe_with(tmp_path, {**generator, "server": "openai" if kind != "embedded" else "embedded"},
                                           {"server": kind, "gpus": 2}), JOB)
    bash_syntax_ok(script)
    assert command in script
    assert "--max-model-len" not in script and "--context-length" not in script  # the model's own, unknown here
    if kind == "vllm":
        assert 'export VLLM_API_KEY="${FINEPHRASE_API_KEY:?' in script and "--api-key" not in script
    if kind == "sglang":
        assert '--api-key "$FINEPHRASE_API_KEY"' in script
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
    assert rt.api_key_env == "FINEPHRASE_API_KEY"  # the run's own key, which its server jobs require
    for program in ("vllm", "sglang"):  # a TGI recipe on server jobs that speak the OpenAI API only
        rt = cluster_runtime(recipe_with(tmp_path, TGI, {"server": program}), str(tmp_path / "out"))
        assert rt.protocol == "openai" and rt.api_key_env == "FINEPHRASE_API_KEY"
    rt = cluster_runtime(recipe_with(tmp_path, TGI, {"server": "tgi"}), str(tmp_path / "out"), servers=0)
    assert rt.api_key_env is None  # no server jobs of the run: the recipe's own key variable, if any


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
