"""The load generator behind ``rerankd bench``: requests, the closed loop, reports and plots."""
