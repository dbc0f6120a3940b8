"""The benchmarks that print JSON figures: `specd bench serve` (`serve`: policies and speculation
modes under Poisson load on a local stack) and `specd bench decode` (`decode`, with `peers`: every
drafting method against plain decoding on the in-process engine). Commands in `cli`."""
