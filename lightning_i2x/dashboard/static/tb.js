// TensorBoard's frame imports this module and calls render(): the dashboard opens in a frame of
// its own (served by the plugin under data/plugin/i2x/, with its own Content-Security-Policy).
export function render() {
  const frame = document.createElement("iframe");
  frame.src = new URL("index.html", import.meta.url).href;
  frame.title = "I2X dashboard";
  for (const [k, v] of Object.entries({ border: "0", width: "100%", height: "100vh", display: "block" })) frame.style[k] = v;
  document.body.style.margin = "0";
  document.body.appendChild(frame);
}
