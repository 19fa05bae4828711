package tokenizer

import "errors"

// Sentinel errors of the Hugging Face loader and the chat templates.
var (
	// ErrNoTokenizer: FromHFDir found no tokenizer.json.
	ErrNoTokenizer = errors.New("no tokenizer.json")
	// ErrUnsupported is wrapped by load errors for tokenizer.json features
	// this package does not implement (the error names the feature).
	ErrUnsupported = errors.New("unsupported tokenizer.json feature")

	// ErrTemplateTooLarge: the chat template exceeds MaxTemplateBytes.
	ErrTemplateTooLarge = errors.New("chat template too large")
	// ErrTemplateTimeout: rendering took longer than the allowed time.
	ErrTemplateTimeout = errors.New("chat template render timed out")
	// ErrTemplateRecursive: a macro calls itself, directly or not.
	ErrTemplateRecursive = errors.New("chat template macro calls itself")
)
