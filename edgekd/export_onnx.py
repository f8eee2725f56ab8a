"""The export API named in docs/ARCHITECTURE.md; the implementation lives in ``edgekd.exporting``."""
from .exporting import (check_model, default_metadata, export_fp32, export_int8, find_divergence, get_metadata,
                        load_model, op_counts, parity_fp32, parity_int8, simplify)

__all__ = ["check_model", "default_metadata", "export_fp32", "export_int8", "find_divergence", "get_metadata",
           "load_model", "op_counts", "parity_fp32", "parity_int8", "simplify"]
