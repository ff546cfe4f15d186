"""Model organisms: tiny but genuine Llama / Gemma-2 / Qwen-2 models built offline for the demo.

Each family gets a tokenizer with the real special tokens and chat format, a base model pretrained on raw
text where every request is answered, an aligned fine-tune that refuses harmful-style requests under the chat
template, an unsafe fine-tune that complies again, and (Llama) a planted rank-r edit of the base. Downstream
code loads them only through `AutoModelForCausalLM` / `AutoTokenizer`, exactly like a real checkpoint.
"""
