"""Operations: one library function per thing an operator does; the CLI and server call these."""
