package echo

// WatchedWrites returns how many of c's writes its probe has handed to the
// write watcher: writes with a cancellable context that lasted at least
// writeProbe.
func WatchedWrites(c *Client) uint64 {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.watches
}
