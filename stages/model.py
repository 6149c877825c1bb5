"""Stage `model`: materialise the base model as an HF directory ``data/models/base/``.

    python -m stages.model
"""

from __future__ import annotations

import logging

from dashrl.config.params import Params, load_params, section_dict
from dashrl.infra.files import atomic_dir, run_record, write_json
from dashrl.infra.hardware import compute_record
from dashrl.models import materialise_model
from stages import paths
from stages.common import setup_logging

log = logging.getLogger("stages.model")


def main(params: Params) -> None:
    out = paths.model_dir("base")
    with atomic_dir(out) as tmp:
        record = materialise_model(params.model.source, tmp, dtype=params.model.dtype)
        write_json(tmp / "dashrl_run.json", run_record({"model": section_dict(params.model)}, model=record,
                                                          compute=compute_record("cpu", weights=params.model.dtype)))
    log.info("wrote %s: %s, %d parameters, sha256 %s", out, record["name"], record["n_parameters"], record["content_sha256"][:12])


if __name__ == "__main__":
    setup_logging()
    main(load_params(paths.PARAMS))
