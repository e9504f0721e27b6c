"""Model presets (``--model``): the paper's shapes, plus two small CPU presets of ours.

Shapes of ``llama-1.4b``/``llama-7b`` are the authors' ``llama2_1.4b``/``llama2_7b`` configs
(1.364B / 6.738B parameters with untied embeddings); the ``gpt2-*`` presets are the released
GPT-2 configs of the paper's SlimPajama runs. ``tiny`` and ``gpt2-mini`` are ours, sized for a
laptop CPU; they are not in the paper. Explicit flags override any value set here.
"""

_LLAMA = dict(
    normalization="RMSNorm",
    norm_epsilon=1e-5,
    swiglu=True,
    position_embedding_type="rope",
    rotary_base=10000,
    untie_embeddings_and_output_weights=True,
    disable_bias_linear=True,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)
_GPT2 = dict(
    normalization="LayerNorm",
    norm_epsilon=1e-5,
    swiglu=False,
    position_embedding_type="learned_absolute",
    untie_embeddings_and_output_weights=False,
    disable_bias_linear=False,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)

PRESETS = {
    # ours: ~3M parameters with an 8k vocabulary, ~3,000 tokens/s on 2 CPU cores
    "tiny": dict(_LLAMA, num_layers=4, hidden_size=128, num_attention_heads=4, ffn_hidden_size=352,
                 seq_length=256, max_position_embeddings=256),
    # ours: the GPT-2 layout at CPU size
    "gpt2-mini": dict(_GPT2, num_layers=4, hidden_size=128, num_attention_heads=4, ffn_hidden_size=512,
                      seq_length=256, max_position_embeddings=256),
    "gpt2-small": dict(_GPT2, num_layers=12, hidden_size=768, num_attention_heads=12, ffn_hidden_size=3072,
                       seq_length=512, max_position_embeddings=512, vocab_size=50257),
    "gpt2-medium": dict(_GPT2, num_layers=24, hidden_size=768, num_attention_heads=16, ffn_hidden_size=3072,
                        seq_length=512, max_position_embeddings=512, vocab_size=50257),
    "gpt2-large": dict(_GPT2, num_layers=36, hidden_size=768, num_attention_heads=24, ffn_hidden_size=3072,
                       seq_length=512, max_position_embeddings=512, vocab_size=50257),
    "llama-1.4b": dict(_LLAMA, num_layers=24, hidden_size=2048, num_attention_heads=16, ffn_hidden_size=5632,
                       seq_length=4096, max_position_embeddings=4096, vocab_size=32000),
    "llama-7b": dict(_LLAMA, num_layers=32, hidden_size=4096, num_attention_heads=32, ffn_hidden_size=11008,
                     seq_length=4096, max_position_embeddings=4096, vocab_size=32000),
}

# What a family means when neither a preset nor a flag says otherwise. The gpt family is
# Megatron-LM's pretrain_gpt.py with no model flags, dropout 0.1 included, so that upstream launch
# scripts build the same model; the GPT-2 presets above set their own dropout.
FAMILY_DEFAULTS = {"llama": _LLAMA, "gpt": dict(_GPT2, hidden_dropout=0.1, attention_dropout=0.1)}
