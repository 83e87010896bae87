"""Channel rules: per-op knowledge of which tensor axes are coupled and how indices map."""
