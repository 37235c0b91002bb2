"""The papers' methods: GPTQ, Q-DiT's group-size search, HQ-DiT's format choice, VQ4DiT, DilateQuant, static clipping."""
