"""Help texts several commands share: what an argument takes and its default, said once."""

SOURCE_HELP = (
    "a package folder, its rdf.yaml/bioimageio.yaml, a .zip, an http(s) URL of one, or a "
    "bioimage.io id such as affable-shark (URLs and ids: the server downloads them)"
)
WEIGHT_FORMAT_HELP = (
    "pytorch_state_dict, torchscript, onnx, tensorflow_saved_model_bundle, keras_v3 or "
    "keras_hdf5 (default: every format the model has for a test; for a prediction the first "
    "the runtime can run: on a CPU onnx, torchscript, pytorch_state_dict, then TensorFlow/Keras)"
)
DEVICE_HELP = "cpu, cuda or cuda:N (default: the runtime's device)"
