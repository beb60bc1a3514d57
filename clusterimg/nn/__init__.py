"""Neural-network pieces without torch: reading PyTorch weight files
(:mod:`~clusterimg.nn.torch_weights`) and the EfficientNet-Lite0 feature
extractor built as an ONNX graph and run with onnxruntime
(:mod:`~clusterimg.nn.efficientnet`)."""
