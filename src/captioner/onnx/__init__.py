"""The whole model as ONNX graphs, for ONNX Runtime on CPU and ONNX Runtime Web in the browser.

`captioner export MODEL --onnx DIR` (`captioner.onnx.export.export_onnx`) writes, format
version 2 (all floats float32, ids int64, batch dynamic everywhere; L layers, H heads, E head
width, T = grid_h * grid_w image tokens, D the encoder's width, V the vocabulary; `{l}` runs over
the layers 0..L-1, keys and values as separate tensors so no graph slices a packed cache):

    captioner.json            everything a non-Python runtime needs: the file names of each
                              variant, preprocessing, grid, token pieces and ids, decoding
                              defaults (`export.describe`)
    encoder.onnx              pixels [batch, 3, S, S] -> features [batch, T, D]
    decoder_image.onnx        features [batch, T, D]
                              -> cross_key_{l}, cross_value_{l} [batch, H, T, E]
                              (image projection and every layer's cross-attention keys and
                              values: once per image)
    decoder_step.onnx         ids [batch, 1] int64, past_key_{l}, past_value_{l} [batch, H, P, E],
                              cross_key_{l}, cross_value_{l} [batch, H, T, E]
                              -> logits [batch, V],
                                 present_key_{l}, present_value_{l} [batch, H, P + 1, E],
                                 cross_attention [batch, L, H, T]
                              (one token per row at position P, taken from the past's shape;
                              P = 0 is a zero-length past; P + 1 <= max_length)
    decoder_image.int8.onnx   the same graphs with 7-bit int8 weights (a scale per column),
    decoder_step.int8.onnx    activations quantised per row (MatMulIntegerToFloat), int8
                              token-embedding rows with a scale each
                              (`export.quantize_matmuls`, docs/determinism.md); the int8
                              variant shares encoder.onnx

With `config.json` and `tokenizer.json` beside them (the export writes both), the folder is a
model `Captioner.from_pretrained` runs in ONNX Runtime without torch (`captioner.runtime.onnx`).
"""
