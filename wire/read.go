package wire

import (
	"errors"
	"fmt"
	"io"
	"slices"
)

// ReadHandshake reads exactly one handshake from r and returns it. It reads
// only the bytes the handshake occupies: the fixed header first, then each
// array's dtype size and ndim, then its dims, checking each piece (with the
// same rules and errors as DecodeHandshake, zero lim meaning DefaultLimits)
// before it reads the next, so a hostile peer cannot make it read or hold
// more than lim allows. r need not be buffered; nothing is read past the
// handshake.
//
// A reader that ends before the first byte gives an error wrapping io.EOF;
// one that ends inside the handshake gives an error wrapping both ErrShort
// and io.ErrUnexpectedEOF. Other read errors are wrapped as they are.
func ReadHandshake(r io.Reader, lim Limits) (Handshake, error) {
	s := scanner{lim: lim.resolve()}
	buf := make([]byte, 0, 64)
	var err error
	if buf, err = readMore(r, buf, headerLen); err != nil {
		return Handshake{}, err
	}
	numArrays, err := s.header(buf)
	if err != nil {
		return Handshake{}, err
	}
	for i := range numArrays {
		if buf, err = readMore(r, buf, arrayHeadLen); err != nil {
			return Handshake{}, err
		}
		dtype, ndim, err := s.arrayHead(buf[len(buf)-arrayHeadLen:], i)
		if err != nil {
			return Handshake{}, err
		}
		if buf, err = readMore(r, buf, ndim*dimLen); err != nil {
			return Handshake{}, err
		}
		if err := s.arrayDims(buf[len(buf)-ndim*dimLen:], i, dtype); err != nil {
			return Handshake{}, err
		}
	}
	return build(buf, numArrays, s.dims), nil
}

// readMore reads exactly n more bytes from r onto the end of buf.
func readMore(r io.Reader, buf []byte, n int) ([]byte, error) {
	if n == 0 {
		return buf, nil
	}
	start := len(buf)
	buf = slices.Grow(buf, n)[:start+n]
	if _, err := io.ReadFull(r, buf[start:]); err != nil {
		switch {
		case start == 0 && errors.Is(err, io.EOF):
			return nil, fmt.Errorf("wire: reading handshake: %w", err)
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return nil, fmt.Errorf("%w: %w", ErrShort, io.ErrUnexpectedEOF)
		default:
			return nil, fmt.Errorf("wire: reading handshake: %w", err)
		}
	}
	return buf, nil
}
