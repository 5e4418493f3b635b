package auditlog

// IndexMemory is how many bytes of the tree's hashes and the entry offsets
// l holds in memory (the rest is in its index files).
func IndexMemory(l *Log) int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.tree.hashes.tail) + len(l.starts.tail)
}
