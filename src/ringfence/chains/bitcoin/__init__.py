"""Bitcoin: address codec, the in-process UTXO simulator, its ChainAdapter, PSBT wallet and cold signer."""
