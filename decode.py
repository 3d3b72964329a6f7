"""Decodes a prompt and prints the completion and its statistics (`pass_jax.cli.decode`).

python decode.py --hf_dir /ckpt/Llama-3.2-1B --head /runs/h/heads/lookahead --prompt "def "
python decode.py --config configs/tiny.py --workdir /tmp/tiny_run --compare --prompt "def "
"""

from pass_jax.cli.decode import main

if __name__ == "__main__":
    main()
