import logging

from utils.checkpoint import format_report, load_weights
from utils.registry import PRETRAIN

logger = logging.getLogger("nextclip")


@PRETRAIN.register_class()
def LoadCheckpoint(model, path: str, strict: bool = True, strip_prefix: str = ""):
    """Load safetensors (or legacy .pth via weights_only) weights; strict with a key report.

    With ``strict: false`` what matches is loaded and everything skipped is logged: missing
    and mis-shaped tensors keep their initial values (e.g. a ``cond_proj`` new to the model),
    unexpected ones are ignored."""
    report = load_weights(model, path, strict=strict, strip_prefix=strip_prefix)
    if any(report.values()):
        logger.warning("partially loaded %s (strict: false): %s; the missing/mismatched tensors keep their "
                       "initial values, the unexpected ones are ignored", path, format_report(report, limit=20))
    else:
        logger.info("loaded %s: %s", path, format_report(report))
    return report
