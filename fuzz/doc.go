// Package fuzz holds the module's fuzz targets, kept apart from the packages
// they exercise so that their seed corpora live in one place
// (testdata/fuzz/<target>). It has no non-test code.
//
// Run one target at a time, for example:
//
//	go test ./fuzz -run '^$' -fuzz '^FuzzDecodeHandshake$' -fuzztime 10s
package fuzz
