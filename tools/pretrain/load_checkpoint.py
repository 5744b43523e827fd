import logging

from utils.checkpoint import format_report, load_weights
from utils.registry import PRETRAIN

logger = logging.getLogger("nextclip")


@PRETRAIN.register_class()
def LoadCheckpoint(model, path: str, strict: bool = True, strip_prefix: str = ""):
    """Load safetensors (or legacy .pth via weights_only) weights; strict with a key report."""
    report = load_weights(model, path, strict=strict, strip_prefix=strip_prefix)
    logger.info("loaded %s: %s", path, format_report(report))
    return report
