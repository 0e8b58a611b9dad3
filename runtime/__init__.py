"""dermsort.runtime: the light runtime (numpy, pillow, click, onnxruntime). Never imports torch."""
