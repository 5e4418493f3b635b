package envelope

// WrapAll is wrapAll, for BenchmarkWrapAll.
var WrapAll = wrapAll
