module ipvslb.bench/k0s-style

go 1.19
