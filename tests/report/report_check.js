// Injected before </body> of a copy of a Snakemake report by tests/report/test_report.py; headless Chromium runs it.
// Drives the report's own app (globals: app, results, categories) and leaves what it saw as JSON in
// a PRE element with id carvana-check: the page the report opens on (its text, before any click), each category's
// navigation text, every image result decoded by the browser (natural size), the images inside the HTML results,
// the content pane showing a figure, and a result's info.
(function () {
  const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const load = (src) => new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve([img.naturalWidth, img.naturalHeight]);
    img.onerror = () => resolve("error");
    img.src = src;
  });
  const decodeHtml = (uri) => {
    const b64 = uri.slice(uri.indexOf(",") + 1);
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new DOMParser().parseFromString(new TextDecoder().decode(bytes), "text/html");
  };
  async function check() {
    const out = { landing: null, nav: {}, images: {}, html_images: {}, shown: null, info: {}, errors: [] };
    try {
      for (let i = 0; i < 100 && typeof app === "undefined"; i++) await wait(50);  // React renders after load
      for (let i = 0; i < 100 && !document.querySelector("#app .prose"); i++) await wait(50);
      const landing = document.querySelector("#app .prose");  // the workflow description, as first shown
      out.landing = landing ? landing.innerText : null;
      for (const cat of Object.keys(categories)) {
        app.setView({ navbarMode: "menu" });  // as a reader does: back to the menu, then the category
        await wait(50);
        app.showCategory(cat);
        await wait(50);
        out.nav[cat] = document.querySelector("nav").innerText;
      }
      for (const [path, r] of Object.entries(results)) {
        if (r.mime_type.startsWith("image/")) {
          out.images[path] = await load(r.data_uri);
        } else if (r.mime_type === "text/html") {
          const doc = decodeHtml(r.data_uri);
          out.html_images[path] = await Promise.all([...doc.querySelectorAll("img")].map((i) => load(i.src)));
        }
        app.showResultInfo(path);
        await wait(50);
        out.info[path] = document.querySelector("nav").innerText;
      }
      const first = Object.keys(results).find((p) => results[p].mime_type === "image/png");
      app.setView({ content: "img", contentPath: results[first].data_uri, resultPath: first });
      await wait(100);
      const shown = [...document.querySelectorAll("#app img")].find((i) => i.src === results[first].data_uri);
      out.shown = shown ? { path: first, size: [shown.naturalWidth, shown.naturalHeight] } : null;
    } catch (e) {
      out.errors.push(String(e && e.stack ? e.stack : e));
    }
    const pre = document.createElement("pre");
    pre.id = "carvana-check";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  window.addEventListener("load", () => { check(); });
})();
