"""Stage `model`: materialise the base model as an HF directory ``data/models/base/``.

    python -m stages.model

The directory holds the weights, the tokenizer and ``dashrl_model.json`` (source, base model, content
hash: nothing that changes when the stage reruns on the same inputs); the run record (package
versions, git commit, machine, time) goes to ``data/runs/model.json``, which no stage depends on.
"""

from __future__ import annotations

import logging

from dashrl.config.params import Params, load_params, section_dict
from dashrl.infra.files import atomic_dir, run_record, write_json
from dashrl.infra.hardware import compute_record
from dashrl.models import EMBEDDED_HUB_ID, materialise_model
from stages import paths
from stages.common import setup_logging, write_model_record

log = logging.getLogger("stages.model")


def main(params: Params) -> None:
    out = paths.model_dir("base")
    used = {"model": section_dict(params.model)}
    with atomic_dir(out) as tmp:
        record = materialise_model(params.model.source, tmp, dtype=params.model.dtype)
        base_model = EMBEDDED_HUB_ID if record["source"] == "embedded" else record["source"]
        # "gguf" is where the embedded model's file lies on this machine: run record only.
        write_model_record(tmp, {"params": used, "base_model": base_model,
                                 "model": {k: v for k, v in record.items() if k != "gguf"}})
    write_json(paths.run_record("model"), run_record(used, model=record, compute=compute_record("cpu", weights=params.model.dtype)))
    log.info("wrote %s: %s, %d parameters, sha256 %s", out, record["name"], record["n_parameters"], record["content_sha256"][:12])


if __name__ == "__main__":
    setup_logging()
    main(load_params(paths.PARAMS))
