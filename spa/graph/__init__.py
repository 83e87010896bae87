"""Loading, saving and normalising ONNX graphs."""
