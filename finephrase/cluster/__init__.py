"""Past one machine: inference servers as Slurm jobs and the pipeline's stages on datatrove's executors.

- :mod:`~finephrase.cluster.templates`: the sbatch scripts of server jobs, rendered from ``launch/`` (TGI, vLLM,
  SGLang, the embedded llama.cpp server) and a recipe's ``cluster:`` block.
- :mod:`~finephrase.cluster.slurm`: the few Slurm commands finephrase runs (``sbatch``, ``squeue``, ``scancel``).
- :mod:`~finephrase.cluster.jobs`: the run's job ledger, ``OUTPUT/.finephrase/jobs.json``.
- :mod:`~finephrase.cluster.servers`: submit server jobs; which of a run's server jobs are still alive.
- :mod:`~finephrase.cluster.executors`: ``build_stages``' stages on ``SlurmPipelineExecutor`` (chained with
  ``depends``) or ``RayPipelineExecutor``.
- :mod:`~finephrase.cluster.secrets`: ``cluster.secrets`` and the run's API key, passed by environment, redacted
  from every file written for a run.
- :mod:`~finephrase.cluster.supervise`: the job that replaces dead server jobs during the rephrase stage and
  releases them all when it ends (servers follow the work).
- :mod:`~finephrase.cluster.launch`: ``finephrase launch``; :mod:`~finephrase.cluster.finish`: the job that writes
  the report and the card after the last stage and releases the servers; :mod:`~finephrase.cluster.status` and
  :mod:`~finephrase.cluster.stop`: ``finephrase status`` / ``finephrase stop``; :mod:`~finephrase.cluster.driver`: a
  Ray launch's driver process (recorded in the ledger, stopped by ``finephrase stop`` with SIGTERM).

Servers: whatever ``generator.server`` says (``embedded``, ``openai``, ``tgi``), a launched recipe gets its replicas
from ``cluster.servers`` server jobs of kind ``cluster.server`` (default: ``embedded`` for an embedded generator,
else ``tgi``), which register in the run's endpoints file (``generator.endpoints_file``, default
``OUTPUT/.finephrase/endpoints.txt``); the rephrase stage's replica pool re-reads it. ``generator.endpoints`` are
used as well (``cluster.servers: 0`` uses only them).

Imports: the recipe, the pipeline's stages, the report and the inference backends (for how requests are addressed)
of finephrase, datatrove's executors, and the Slurm command-line tools through :mod:`~finephrase.cluster.slurm`;
nothing outside this package imports it except the CLI (``finephrase.cli.cluster.register``).
"""



