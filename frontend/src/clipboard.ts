/** `text` onto the clipboard; whether that worked. The Clipboard API needs a secure context
 * (HTTPS or localhost): elsewhere, as on a LAN address over plain HTTP, the older copy command
 * on a selected, unseen text field does it. */
export async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // no Clipboard API here, or the browser refused it: try the copy command
  }
  const field = document.createElement("textarea");
  field.value = text;
  field.readOnly = true;
  field.style.position = "fixed";
  field.style.opacity = "0";
  document.body.append(field);
  field.select();
  try {
    return document.execCommand("copy");
  } catch {
    return false;
  } finally {
    field.remove();
  }
}
