module clew.dev/bench/loadgen

go 1.22
