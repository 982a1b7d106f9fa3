"""data_gen: corpus -> random cut -> teacher continuation -> crash-safe Arrow shards."""
