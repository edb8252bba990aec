// xcount: an unmodified Extism plugin, written with the official AssemblyScript PDK
// (@extism/as-pdk), that wasmkv and the Extism SDKs both run. It imports only
// `extism:host/env`; every export takes no parameters and returns an i32 status
// (0: success; non-zero: failure). A message set with `error_set` fails the call
// whatever the status, and is what the host reports.
//
// Exports:
//   count   reads var "count" (decimal text, absent = 0), adds one, stores it
//           with var_set and outputs the new value as decimal text; input ignored.
//   reset   removes var "count" (var_set with a value offset of 0); outputs nothing.
//   greet   outputs "<greeting>, <input>!" where <greeting> is config "greeting"
//           when the host set it, else "Hello" (the config value's block is then freed).
//   echo    outputs the input bytes unchanged (binary safe, any length).
//   fail    sets the error "it failed: <input>" and returns 1.
//   status  returns the input (decimal) as its status, setting no error.
//   warn    sets the error "warned: <input>" but returns 0 (Extism fails such a call).
//   log_it  logs "xcount info: <input>", "xcount warn: <input>" and
//           "xcount error: <input>" at info, warn and error levels, then outputs "logged".
//   big     outputs that many bytes (the input is a decimal length), byte i being
//           i % 251, so the caller can check every byte.
//   http_get  asks the host for GET <input> (a URL) with http_request and outputs the
//           response body; Extism without allowed_hosts and wasmkv both refuse, the
//           import failing the call.
//
// Built with `--use abort=xcount/abort` (plugins/extism/build.py): a failed assertion
// or out-of-bounds access in AssemblyScript reports through `error_set` and traps
// instead of importing `env.abort`, which an Extism host does not provide.

import { Config, Host, LogLevel, Memory, Var } from "@extism/as-pdk";
import { error_set, http_request, length } from "@extism/as-pdk/lib/env";

/** The UTF-8 bytes of `s` (the PDK's `outputString` counts UTF-16 units, so this is used instead). */
function utf8(s: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(s));
}

/** Set the Extism error message (the host reads it with the call's failure). */
function setError(message: string): void {
  error_set(Memory.allocateString(message).offset);
}

/** The AssemblyScript runtime's abort hook: report the message as the Extism error, then trap. */
function abort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  const what = message === null ? "abort" : message;
  const where = fileName === null ? "?" : fileName;
  setError(what + " at " + where + ":" + line.toString() + ":" + column.toString());
  unreachable();
}

export function count(): i32 {
  const stored = Var.getString("count");
  let n: u64 = 0;
  if (stored !== null && stored.length > 0) {
    n = U64.parseInt(stored, 10);
  }
  n += 1;
  const text = n.toString();
  Var.set("count", utf8(text));
  Host.output(utf8(text));
  return 0;
}

export function reset(): i32 {
  Var.remove("count");
  return 0;
}

export function greet(): i32 {
  const name = Host.inputString();
  const configured = Config.getMemory("greeting");
  let greeting = "Hello";
  if (configured !== null) {
    greeting = configured.toString();
    configured.free();
  }
  Host.output(utf8(greeting + ", " + name + "!"));
  return 0;
}

export function echo(): i32 {
  Host.output(Host.input());
  return 0;
}

export function fail(): i32 {
  setError("it failed: " + Host.inputString());
  return 1;
}

export function status(): i32 {
  return I32.parseInt(Host.inputString(), 10);
}

export function warn(): i32 {
  setError("warned: " + Host.inputString());
  return 0;
}

export function log_it(): i32 {
  const input = Host.inputString();
  Host.log(LogLevel.Info, "xcount info: " + input);
  Host.log(LogLevel.Warn, "xcount warn: " + input);
  Host.log(LogLevel.Error, "xcount error: " + input);
  Host.output(utf8("logged"));
  return 0;
}

export function big(): i32 {
  const text = Host.inputString();
  const n = text.length > 0 ? I32.parseInt(text, 10) : 0;
  if (n < 0) {
    setError("big: not a length: " + text);
    return 2;
  }
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = u8(i % 251);
  }
  Host.output(out);
  return 0;
}

/** `s` as a JSON string literal. */
function jsonString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c == 0x22) out += '\\"';
    else if (c == 0x5c) out += "\\\\";
    else if (c < 0x20) out += "\\u00" + (c < 0x10 ? "0" : "") + c.toString(16);
    else out += String.fromCharCode(c);
  }
  return out + '"';
}

export function http_get(): i32 {
  const request = '{"url":' + jsonString(Host.inputString()) + ',"method":"GET","headers":{}}';
  const response = http_request(Memory.allocateString(request).offset, 0);
  if (response == 0) {
    Host.output(new Uint8Array(0));
    return 0;
  }
  Host.outputMemory(new Memory(response, length(response)));
  return 0;
}
