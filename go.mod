module github.com/seed-a9ef92a1/echo

go 1.26.0

require (
	github.com/google/pprof v0.0.0-20261105003125-4bf881d7fb0b
	github.com/klauspost/cpuid/v2 v2.4.2
	github.com/x448/float16 v0.8.4
	go.uber.org/goleak v1.3.0
	golang.org/x/sys v0.50.0
)

require github.com/dgryski/go-metro v0.0.0-20250106013310-edb8663e5e33 // indirect
