// unicode_digits.h: Python's str.isdigit() for one code point, from a table generated out of python3's unicodedata.
#pragma once
#include <cstddef>
#include <cstdint>

// True when chr(cp).isdigit() is true in python3 (Numeric_Type Digit or Decimal: ASCII 0-9, ², ①, ٣, ...).
bool py_isdigit_codepoint(uint32_t cp);
// The Unicode version (unicodedata.unidata_version) the table was generated from, e.g. "14.0.0".
extern const char* const kUnicodeDigitsVersion;
